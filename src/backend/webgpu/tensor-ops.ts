/**
 * The seam's tensor ops (layers.ts TensorOps) as WGSL kernels on f32 tensors, same semantics as the host loops:
 *   copyRows   strided 2-D copy [rows, width] between offsets/strides (OVERWRITES dst)
 *   fill       x[offset .. offset + n) = value (any f32, NaN and infinities included: passed as bits)
 *   addInto    dst += src over n values (src may be dst)
 *   splitQkv   qkv [B, L, (H + 2 Hkv) D] -> q [B, H, L, D], k and v [B, Hkv, L, D]; mergeQkv the inverse (OVERWRITES);
 *              head rows may be wider than D (strides qkStride for q and k, vStride for v: only D columns move)
 *   globalNorm out[i] = sqrt(sum of squares over several tensors); clipByNorm scales them by clip / norm on the GPU
 *   countNonFinite  out[i] = number of NaN/Inf among x[0 .. n)
 *   gateForward/gateBackward  log sigmoid or softplus over [outer, len, inner], optionally their running sum along
 *              len re-centred at one row (fox's F), and the gradient; the sums run in f32, in order, per column
 * Reductions are deterministic: per-workgroup partial sums in a fixed order, then one workgroup adds the partials.
 * Sums are f32 (the device's widest float): a sum of squares of N values carries a relative error of about
 * (4096 / 64 + 2 log2 64 + partials / 64) f32 roundoffs, not N of them. Non-finite values are recognised by their
 * bits, never by float comparisons (shader compilers may assume finite values).
 */
import { HypeError } from '../../errors.ts';
import type { GateFn } from '../layers.ts';
import type { GpuContext, GpuTensor } from './context.ts';
import { binds, ew, FLAT, MAIN_EW, MAIN_ROW, need, RW, runKernel, stridedSpan } from './layers.ts';

/**
 * The gate functions in f32, stable at large |z| (exp only of non-positive arguments). log1p(e) = log(v) e / (v - 1)
 * with v = 1 + e (exact to a few ulps; e itself when v rounds to 1), since WGSL has no log1p.
 */
const GATE_FNS = /* wgsl */ `
fn log1pf(e: f32) -> f32 { let v = 1.0 + e; if (v == 1.0) { return e; } return log(v) * (e / (v - 1.0)); }
fn softplusf(z: f32) -> f32 { return max(z, 0.0) + log1pf(exp(-abs(z))); }
fn sigmoidf(z: f32) -> f32 { let e = exp(-abs(z)); return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0); }
fn act(f: u32, z: f32) -> f32 { return select(softplusf(z), -softplusf(-z), f == 0u); }
fn dact(f: u32, z: f32) -> f32 { return select(sigmoidf(z), sigmoidf(-z), f == 0u); }
`;

/** Values per workgroup in the first pass of a reduction (64 invocations, 64 values each). */
const PER = 4096;

const SOURCES = {
  copyRows: () => `struct U { srcOff: u32, srcStride: u32, dstOff: u32, dstStride: u32, rows: u32, width: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['src', 'dst'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i >= u.rows * u.width) { return; }
  let r = i / u.width; let j = i % u.width;
  dst[u.dstOff + r * u.dstStride + j] = src[u.srcOff + r * u.srcStride + j];
}`,
  fill: () => `struct U { off: u32, n: u32, bits: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i < u.n) { x[u.off + i] = bitcast<f32>(u.bits); }
}`,
  addInto: () => `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['dst', 'src'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i < u.n) { dst[i] += src[i]; }
}`,
  // i walks qkv [B, L, (H + 2 Hkv) D]; toParts = 1 splits (qkv -> q, k, v), 0 merges (q, k, v -> qkv).
  qkv: () => `struct U { b: u32, l: u32, h: u32, hkv: u32, d: u32, toParts: u32, qks: u32, vs: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['qkv', 'q', 'k', 'v'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  let width = (u.h + 2u * u.hkv) * u.d;
  if (i >= u.b * u.l * width) { return; }
  let row = i / width; let col = i % width;
  let head = col / u.d; let x = col % u.d;
  let b = row / u.l; let tk = row % u.l;
  if (head < u.h) {
    let j = ((b * u.h + head) * u.l + tk) * u.qks + x;
    if (u.toParts != 0u) { q[j] = qkv[i]; } else { qkv[i] = q[j]; }
  } else if (head < u.h + u.hkv) {
    let j = ((b * u.hkv + head - u.h) * u.l + tk) * u.qks + x;
    if (u.toParts != 0u) { k[j] = qkv[i]; } else { qkv[i] = k[j]; }
  } else {
    let j = ((b * u.hkv + head - u.h - u.hkv) * u.l + tk) * u.vs + x;
    if (u.toParts != 0u) { v[j] = qkv[i]; } else { qkv[i] = v[j]; }
  }
}`,
  // Pass 1 of a reduction over x[0 .. n): partial[base + g] = the sum over workgroup g's PER values of x^2
  // (square = 1) or of the non-finite indicator (square = 0).
  partial: () => `struct U { n: u32, base: u32, square: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'partial'])}
${FLAT}
${MAIN_ROW} {
  let g = rowOf(wg, nwg);
  let start = g * ${PER}u; let end = min(start + ${PER}u, u.n);
  var s = 0.0;
  if (u.square != 0u) {
    for (var i = start + t; i < end; i += ${RW}u) { s = fma(x[i], x[i], s); }
  } else {
    for (var i = start + t; i < end; i += ${RW}u) {
      if ((bitcast<u32>(x[i]) & 0x7f800000u) == 0x7f800000u) { s += 1.0; }
    }
  }
  s = wsum(t, s);
  if (t == 0u) { partial[u.base + g] = s; }
}`,
  // Pass 2: out[index] = the sum of partial[0 .. n), or its square root (root = 1). OVERWRITES.
  total: () => `struct U { n: u32, index: u32, root: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['partial', 'out'])}
${FLAT}
${MAIN_ROW} {
  var s = 0.0;
  for (var i = t; i < u.n; i += ${RW}u) { s += partial[i]; }
  s = wsum(t, s);
  if (t == 0u) { out[u.index] = select(s, sqrt(s), u.root != 0u); }
}`,
  // x *= clip / norm[index] when clip > 0 and the norm is finite and above clip; otherwise x is left alone.
  clip: () => `struct U { n: u32, index: u32, clip: f32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['norm', 'x'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i >= u.n) { return; }
  let nv = norm[u.index];
  let finite = (bitcast<u32>(nv) & 0x7f800000u) != 0x7f800000u;
  if (u.clip > 0.0 && finite && nv > u.clip) { x[i] = x[i] * (u.clip / nv); }
}`,
  // Gate activations (layers.ts gateForward): fn 0 = log sigmoid, 1 = softplus. scan = 0: elementwise, one value
  // per invocation; scan = 1: one (o, j) column per invocation, its running sum along len in order, re-centred at
  // row origin (the prefix sums are stored, then the centre subtracted, as on the host).
  gateForward: () => `struct U { outer: u32, len: u32, inner: u32, gate: u32, scan: u32, origin: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'out'])}
${FLAT}
${GATE_FNS}
${MAIN_EW} {
  let c = flat(wg, nwg, t);
  if (u.scan == 0u) {
    if (c < u.outer * u.len * u.inner) { out[c] = act(u.gate, x[c]); }
    return;
  }
  if (c >= u.outer * u.inner) { return; }
  let base = (c / u.inner) * u.len * u.inner + c % u.inner;
  var s = 0.0;
  for (var i = 0u; i < u.len; i++) { s += act(u.gate, x[base + i * u.inner]); out[base + i * u.inner] = s; }
  let centre = out[base + u.origin * u.inner];
  for (var i = 0u; i < u.len; i++) { out[base + i * u.inner] -= centre; }
}`,
  // Its backward: dx = g f'(x), g = dOut (scan = 0) or the suffix sums of dOut minus their total up to origin.
  gateBackward: () => `struct U { outer: u32, len: u32, inner: u32, gate: u32, scan: u32, origin: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'dOut', 'dx'])}
${FLAT}
${GATE_FNS}
${MAIN_EW} {
  let c = flat(wg, nwg, t);
  if (u.scan == 0u) {
    if (c < u.outer * u.len * u.inner) { dx[c] = dOut[c] * dact(u.gate, x[c]); }
    return;
  }
  if (c >= u.outer * u.inner) { return; }
  let base = (c / u.inner) * u.len * u.inner + c % u.inner;
  var total = 0.0;
  for (var i = 0u; i < u.len; i++) { total += dOut[base + i * u.inner]; }
  var g = 0.0;
  for (var i = u.len; i > 0u; i--) {
    let k = base + (i - 1u) * u.inner;
    g += dOut[k];
    dx[k] = select(g, g - total, i - 1u <= u.origin) * dact(u.gate, x[k]);
  }
}`,
} as const;

type Uniforms = readonly (readonly ['u' | 'i' | 'f', number])[];

function run(
  ctx: GpuContext,
  name: keyof typeof SOURCES,
  what: string,
  u: Uniforms,
  tensors: readonly GpuTensor[],
  groups: number,
  alias?: readonly [number, number, string, string],
): void {
  runKernel(ctx, `tensor-${name}`, SOURCES[name], what, u, tensors, groups, alias);
}

function count(what: string, x: number): void {
  if (!(Number.isSafeInteger(x) && x >= 0 && x < 2 ** 32))
    throw new HypeError('shape', `${what} must be a non-negative integer below 2^32, got ${x}`);
}

/** dst[dstOffset + r dstStride + j] = src[srcOffset + r srcStride + j], r < rows, j < width (OVERWRITES). */
export function gpuCopyRows(
  ctx: GpuContext,
  src: GpuTensor,
  srcOffset: number,
  srcStride: number,
  dst: GpuTensor,
  dstOffset: number,
  dstStride: number,
  rows: number,
  width: number,
): void {
  for (const [w, x] of [
    ['srcOffset', srcOffset],
    ['srcStride', srcStride],
    ['dstOffset', dstOffset],
    ['dstStride', dstStride],
    ['rows', rows],
    ['width', width],
  ] as const)
    count(`copyRows ${w}`, x);
  if (rows === 0 || width === 0) return;
  need('copyRows src', src, srcOffset + (rows - 1) * srcStride + width);
  need('copyRows dst', dst, dstOffset + (rows - 1) * dstStride + width);
  if (src.buffer === dst.buffer) {
    // One buffer cannot be bound twice writably: copy through scratch. Overlapping ranges are refused: the host
    // copies row by row, so its result there depends on the row order, which a parallel copy cannot reproduce.
    const n = (rows - 1) * srcStride + width;
    const dstEnd = dstOffset + (rows - 1) * dstStride + width;
    if (srcOffset < dstEnd && dstOffset < srcOffset + n)
      throw new HypeError(
        'argument',
        'copyRows: source and destination overlap inside one tensor; copy through a separate tensor',
      );
    const tmp = ctx.empty([n]);
    gpuCopyRows(ctx, src, srcOffset, n, tmp, 0, n, 1, n);
    gpuCopyRows(ctx, tmp, 0, srcStride, dst, dstOffset, dstStride, rows, width);
    ctx.release(tmp);
    return;
  }
  if (rows === 1 || (srcStride === width && dstStride === width)) {
    ctx.copy(src, srcOffset, dst, dstOffset, rows * width); // contiguous: the queue's own copy, no kernel
    return;
  }
  const u = [
    ['u', srcOffset],
    ['u', srcStride],
    ['u', dstOffset],
    ['u', dstStride],
    ['u', rows],
    ['u', width],
  ] as const;
  run(ctx, 'copyRows', 'copyRows', u, [src, dst], ew(rows * width));
}

const F32 = new Float32Array(1);
const BITS = new Uint32Array(F32.buffer);

/** x[offset .. offset + n) = value (rounded to f32). */
export function gpuFill(ctx: GpuContext, x: GpuTensor, value: number, offset: number, n: number): void {
  count('fill offset', offset);
  count('fill n', n);
  need('fill x', x, offset + n);
  F32[0] = value;
  const u = [
    ['u', offset],
    ['u', n],
    ['u', BITS[0]!],
  ] as const;
  run(ctx, 'fill', 'fill', u, [x], ew(n));
}

/** dst[i] += src[i], i < n (src may be dst: then dst doubles). */
export function gpuAddInto(ctx: GpuContext, dst: GpuTensor, src: GpuTensor, n: number): void {
  count('addInto n', n);
  need('addInto dst', dst, n);
  need('addInto src', src, n);
  run(ctx, 'addInto', 'addInto', [['u', n]], [dst, src], ew(n), [1, 0, 'src', 'dst']);
}

function qkv(
  ctx: GpuContext,
  what: string,
  whole: GpuTensor,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  dims: readonly [number, number, number, number, number, number, number],
  toParts: number,
): void {
  const [B, L, H, Hkv, D, qkStride, vStride] = dims;
  for (const [w, x] of [
    ['B', B],
    ['L', L],
    ['H', H],
    ['Hkv', Hkv],
    ['D', D],
    ['qkStride', qkStride],
    ['vStride', vStride],
  ] as const)
    count(`${what} ${w}`, x);
  if (qkStride < D || vStride < D) {
    throw new HypeError(
      'shape',
      `${what}: head row strides (${qkStride} for q and k, ${vStride} for v) must be at least D = ${D}`,
    );
  }
  const n = B * L * (H + 2 * Hkv) * D;
  need(`${what} qkv`, whole, n);
  need(`${what} q`, q, stridedSpan(B * H * L, D, qkStride));
  need(`${what} k`, k, stridedSpan(B * Hkv * L, D, qkStride));
  need(`${what} v`, v, stridedSpan(B * Hkv * L, D, vStride));
  const buffers = new Set([whole.buffer, q.buffer, k.buffer, v.buffer]);
  if (buffers.size !== 4) throw new HypeError('argument', `${what}: qkv, q, k and v must be four distinct tensors`);
  const u = [
    ['u', B],
    ['u', L],
    ['u', H],
    ['u', Hkv],
    ['u', D],
    ['u', toParts],
    ['u', qkStride],
    ['u', vStride],
  ] as const;
  run(ctx, 'qkv', what, u, [whole, q, k, v], ew(n));
}

/** qkv [B, L, (H + 2 Hkv) D] -> q [B, H, L, D], k, v [B, Hkv, L, D] (head rows of stride qkStride, vStride). */
export function gpuSplitQkv(
  ctx: GpuContext,
  whole: GpuTensor,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  B: number,
  L: number,
  H: number,
  Hkv: number,
  D: number,
  qkStride = D,
  vStride = D,
): void {
  qkv(ctx, 'splitQkv', whole, q, k, v, [B, L, H, Hkv, D, qkStride, vStride], 1);
}

/** dq, dk, dv (head rows of stride qkStride, vStride) -> dqkv [B, L, (H + 2 Hkv) D] (OVERWRITES). */
export function gpuMergeQkv(
  ctx: GpuContext,
  dq: GpuTensor,
  dk: GpuTensor,
  dv: GpuTensor,
  dqkv: GpuTensor,
  B: number,
  L: number,
  H: number,
  Hkv: number,
  D: number,
  qkStride = D,
  vStride = D,
): void {
  qkv(ctx, 'mergeQkv', dqkv, dq, dk, dv, [B, L, H, Hkv, D, qkStride, vStride], 0);
}

/** Partial sums of each tensor's first `sizes[i]` values (x^2 or the non-finite indicator), then the total. */
function reduce(
  ctx: GpuContext,
  what: string,
  xs: readonly GpuTensor[],
  sizes: readonly number[],
  out: GpuTensor,
  outIndex: number,
  square: boolean,
): void {
  count(`${what} outIndex`, outIndex);
  need(`${what} out`, out, outIndex + 1);
  const groups = sizes.map((n) => Math.ceil(n / PER));
  const total = groups.reduce((a, b) => a + b, 0);
  const partial = ctx.empty([Math.max(1, total)]);
  let base = 0;
  xs.forEach((x, i) => {
    need(`${what} tensor ${i}`, x, sizes[i]!);
    if (groups[i] === 0) return;
    const u = [
      ['u', sizes[i]!],
      ['u', base],
      ['u', square ? 1 : 0],
    ] as const;
    run(ctx, 'partial', what, u, [x, partial], groups[i]!);
    base += groups[i]!;
  });
  const u = [
    ['u', total],
    ['u', outIndex],
    ['u', square ? 1 : 0],
  ] as const;
  run(ctx, 'total', what, u, [partial, out], 1);
  ctx.release(partial);
}

/** out[outIndex] = sqrt(sum over the tensors of x^2), each tensor whole. */
export function gpuGlobalNorm(ctx: GpuContext, xs: readonly GpuTensor[], out: GpuTensor, outIndex: number): void {
  reduce(
    ctx,
    'globalNorm',
    xs,
    xs.map((x) => x.size),
    out,
    outIndex,
    true,
  );
}

/** out[outIndex] = the number of NaN/Inf values among x[0 .. n). */
export function gpuCountNonFinite(ctx: GpuContext, x: GpuTensor, n: number, out: GpuTensor, outIndex: number): void {
  count('countNonFinite n', n);
  reduce(ctx, 'countNonFinite', [x], [n], out, outIndex, false);
}

/** When clip > 0 and norm[normIndex] is finite and above clip: every tensor *= clip / norm, on the GPU. */
export function gpuClipByNorm(
  ctx: GpuContext,
  xs: readonly GpuTensor[],
  norm: GpuTensor,
  normIndex: number,
  clip: number,
): void {
  count('clipByNorm normIndex', normIndex);
  need('clipByNorm norm', norm, normIndex + 1);
  if (!(clip > 0)) return; // clipping off: nothing to enqueue
  for (const x of xs) {
    if (x.buffer === norm.buffer) throw new HypeError('argument', 'clipByNorm: the norm cannot be one of the tensors');
    const u = [
      ['u', x.size],
      ['u', normIndex],
      ['f', clip],
    ] as const;
    run(ctx, 'clip', 'clipByNorm', u, [norm, x], ew(x.size));
  }
}

const GATE_FN_CODES: Record<GateFn, number> = { logSigmoid: 0, softplus: 1 };

function gateArgs(what: string, outer: number, len: number, inner: number, fn: GateFn, origin: number): Uniforms {
  for (const [w, x] of [
    ['outer', outer],
    ['len', len],
    ['inner', inner],
  ] as const)
    count(`${what} ${w}`, x);
  if (!(fn in GATE_FN_CODES))
    throw new HypeError('argument', `${what}: unknown gate function ${JSON.stringify(fn)}; use logSigmoid or softplus`);
  if (!(Number.isInteger(origin) && origin < len))
    throw new HypeError('argument', `${what}: origin ${origin} must be an integer below len = ${len} (-1: no sum)`);
  return [
    ['u', outer],
    ['u', len],
    ['u', inner],
    ['u', GATE_FN_CODES[fn]],
    ['u', origin >= 0 ? 1 : 0],
    ['u', Math.max(origin, 0)],
  ];
}

/**
 * layers.ts gateForward (dOut null: out = f(x), or its running sum along len re-centred at `origin` >= 0) and
 * gateBackward (out = dx = d/dx sum(dOut * forward), OVERWRITTEN; dx may be dOut) on the GPU.
 */
export function gpuGate(
  ctx: GpuContext,
  x: GpuTensor,
  dOut: GpuTensor | null,
  out: GpuTensor,
  dims: readonly [outer: number, len: number, inner: number],
  fn: GateFn,
  origin: number,
): void {
  const what = dOut ? 'gateBackward' : 'gateForward';
  const [outer, len, inner] = dims;
  const u = gateArgs(what, outer, len, inner, fn, origin);
  const n = outer * len * inner;
  for (const [w, t] of [['x', x], ...(dOut ? [['dOut', dOut] as const] : []), ['out', out]] as const)
    need(`${what} ${w}`, t, n);
  if (n === 0) return;
  if (x.buffer === out.buffer)
    throw new HypeError('argument', `${what}: the output cannot be x; pass a separate tensor`);
  const groups = ew(origin >= 0 ? outer * inner : n);
  if (dOut) run(ctx, 'gateBackward', what, u, [x, dOut, out], groups, [2, 1, 'dx', 'dOut']);
  else run(ctx, 'gateForward', what, u, [x, out], groups);
}
