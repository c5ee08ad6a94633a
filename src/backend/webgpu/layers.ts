/**
 * The layer operations of a training step as WGSL kernels on GPU-resident tensors, with exactly the semantics of
 * src/backend/layers.ts (same formulas, same overwrite/accumulate rules), in f32:
 *   layer norm forward/backward, GELU (tanh form) forward/backward, bias add and bias gradient, softmax
 *   cross-entropy forward (per-row losses and their mean, kept on the GPU) and backward, AdamW, embedding gather and
 *   scatter-add, head split/merge ([B, L, H D] <-> [B, H, L, D]), the sum of squares for gradient norms, and the
 *   prefix-masked row softmax of attention over explicit scores (forward in place, backward from the probabilities).
 * Row-wise ops run one 64-invocation workgroup per row with tree reductions in workgroup memory; column sums
 * (parameter gradients, embedding scatter) run one invocation per column looping over rows in order, so they are
 * deterministic and need no atomics. Every tensor is bound read_write, so the aliasing layers.ts allows (GELU in
 * place, cross-entropy gradient over the logits) works here too.
 * Token ids are checked on the host when uploaded (uploadTokens); kernels skip ids outside [0, vocab) rather than
 * read out of bounds.
 */
import { HypeError } from '../../errors.ts';
import { packUniforms, type GpuContext, type GpuTensor } from './context.ts';
import { grid1d } from './attention.ts';

export const EW = 256; // elementwise workgroup size
export const RW = 64; // row workgroup size

/** Storage bindings 1.. for `names`, all read_write (see the module comment). */
export function binds(names: readonly string[], types: readonly string[] = []): string {
  return names
    .map((n, i) => `@group(0) @binding(${i + 1}) var<storage, read_write> ${n}: array<${types[i] ?? 'f32'}>;`)
    .join('\n');
}

/**
 * The in-place variant of a kernel: WebGPU refuses one buffer in two writable bindings, so the output binding
 * `from` is dropped (later bindings move up by one) and every use of it reads and writes `to` instead.
 */
function inPlace(src: string, from: string, to: string): string {
  const lines = src.split('\n');
  const out: string[] = [];
  let dropped = -1;
  for (const line of lines) {
    const m = /^@group\(0\) @binding\((\d+)\) var<storage, read_write> (\w+):/.exec(line);
    if (m && m[2] === from) {
      dropped = Number(m[1]);
      continue;
    }
    if (m && dropped >= 0 && Number(m[1]) > dropped) {
      out.push(line.replace(`@binding(${m[1]})`, `@binding(${Number(m[1]) - 1})`));
      continue;
    }
    out.push(line);
  }
  return out.join('\n').replace(new RegExp(`\\b${from}\\[`, 'g'), `${to}[`);
}

export const FLAT = /* wgsl */ `
fn flat(wg: vec3u, nwg: vec3u, t: u32) -> u32 { return (wg.x + wg.y * nwg.x) * ${EW}u + t; }
fn rowOf(wg: vec3u, nwg: vec3u) -> u32 { return wg.x + wg.y * nwg.x; }
var<workgroup> red: array<f32, ${RW}>;
fn wsum(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = ${RW / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] += red[t + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn wmax(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = ${RW / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] = max(red[t], red[t + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
`;

export const MAIN_EW = `@compute @workgroup_size(${EW})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32)`;
export const MAIN_ROW = `@compute @workgroup_size(${RW})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32)`;

// GELU (tanh form) via 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2 z)); the exponent is clamped so exp stays finite
// (beyond |x| = 20 the gate is 0 or 1 to f32 precision anyway).
const GELU = /* wgsl */ `
const GELU_C = 0.7978845608028654;
const GELU_A = 0.044715;
fn geluGate(x: f32) -> f32 {
  let xc = clamp(x, -20.0, 20.0);
  return 1.0 / (1.0 + exp(clamp(-2.0 * GELU_C * (xc + GELU_A * xc * xc * xc), -80.0, 80.0)));
}
`;

const SOURCES: Record<string, () => string> = {
  layerNormForward: () => `struct U { rows: u32, width: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'gamma', 'beta', 'out', 'mean', 'rstd'])}
${FLAT}
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.width;
  var s = 0.0;
  for (var j = t; j < u.width; j += ${RW}u) { s += x[o + j]; }
  let mu = wsum(t, s) / f32(u.width);
  var v = 0.0;
  for (var j = t; j < u.width; j += ${RW}u) { let d = x[o + j] - mu; v += d * d; }
  let rs = 1.0 / sqrt(wsum(t, v) / f32(u.width) + u.eps);
  for (var j = t; j < u.width; j += ${RW}u) { out[o + j] = (x[o + j] - mu) * rs * gamma[j] + beta[j]; }
  if (t == 0u) { mean[row] = mu; rstd[row] = rs; }
}`,
  layerNormBackwardRows: () => `struct U { rows: u32, width: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['dOut', 'x', 'gamma', 'mean', 'rstd', 'dx'])}
${FLAT}
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.width; let mu = mean[row]; let rs = rstd[row];
  var sg = 0.0; var sgx = 0.0;
  for (var j = t; j < u.width; j += ${RW}u) {
    let xhat = (x[o + j] - mu) * rs; let g = dOut[o + j] * gamma[j];
    sg += g; sgx += g * xhat;
  }
  let meanG = wsum(t, sg) / f32(u.width);
  let meanGX = wsum(t, sgx) / f32(u.width);
  for (var j = t; j < u.width; j += ${RW}u) {
    let xhat = (x[o + j] - mu) * rs;
    dx[o + j] += rs * (dOut[o + j] * gamma[j] - meanG - xhat * meanGX);
  }
}`,
  layerNormBackwardParams: () => `struct U { rows: u32, width: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['dOut', 'x', 'mean', 'rstd', 'dGamma', 'dBeta'])}
${FLAT}
${MAIN_EW} {
  let j = flat(wg, nwg, t);
  if (j >= u.width) { return; }
  var dg = 0.0; var db = 0.0;
  for (var r = 0u; r < u.rows; r++) {
    let dy = dOut[r * u.width + j];
    dg += dy * (x[r * u.width + j] - mean[r]) * rstd[r]; db += dy;
  }
  dGamma[j] += dg; dBeta[j] += db;
}`,
  geluForward: () => `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'out'])}
${FLAT}${GELU}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i < u.n) { let v = x[i]; out[i] = v * geluGate(v); }
}`,
  geluBackward: () => `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'dOut', 'dx'])}
${FLAT}${GELU}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i < u.n) {
    let v = x[i]; let s = geluGate(v); let du = GELU_C * (1.0 + 3.0 * GELU_A * v * v);
    dx[i] = dOut[i] * (s + 2.0 * v * s * (1.0 - s) * du);
  }
}`,
  biasAdd: () => `struct U { rows: u32, width: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['out', 'bias'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i < u.rows * u.width) { out[i] += bias[i % u.width]; }
}`,
  biasBackward: () => `struct U { rows: u32, width: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['dOut', 'dBias'])}
${FLAT}
${MAIN_EW} {
  let j = flat(wg, nwg, t);
  if (j >= u.width) { return; }
  var acc = 0.0;
  for (var r = 0u; r < u.rows; r++) { acc += dOut[r * u.width + j]; }
  dBias[j] += acc;
}`,
  crossEntropyForward: () => `struct U { rows: u32, vocab: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['logits', 'targets', 'losses'], ['f32', 'i32', 'f32'])}
${FLAT}
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.vocab;
  var m = -3.40282346638528859812e+38f;
  for (var j = t; j < u.vocab; j += ${RW}u) { m = max(m, logits[o + j]); }
  m = wmax(t, m);
  var s = 0.0;
  for (var j = t; j < u.vocab; j += ${RW}u) { s += exp(logits[o + j] - m); }
  s = wsum(t, s);
  let tg = targets[row];
  if (t == 0u && tg >= 0 && u32(tg) < u.vocab) { losses[row] = m + log(s) - logits[o + u32(tg)]; }
}`,
  meanOf: () => `struct U { n: u32, index: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['values', 'result'])}
${FLAT}
${MAIN_ROW} {
  var s = 0.0;
  for (var i = t; i < u.n; i += ${RW}u) { s += values[i]; }
  s = wsum(t, s);
  if (t == 0u) { result[u.index] = s / f32(u.n); }
}`,
  crossEntropyBackward: () => `struct U { rows: u32, vocab: u32, dLoss: f32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['logits', 'targets', 'dLogits'], ['f32', 'i32', 'f32'])}
${FLAT}
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.vocab;
  var m = -3.40282346638528859812e+38f;
  for (var j = t; j < u.vocab; j += ${RW}u) { m = max(m, logits[o + j]); }
  m = wmax(t, m);
  var s = 0.0;
  for (var j = t; j < u.vocab; j += ${RW}u) { let e = exp(logits[o + j] - m); dLogits[o + j] = e; s += e; }
  let scale = u.dLoss / wsum(t, s);
  for (var j = t; j < u.vocab; j += ${RW}u) { dLogits[o + j] = dLogits[o + j] * scale; }
  storageBarrier();
  workgroupBarrier();
  let tg = targets[row];
  if (t == 0u && tg >= 0 && u32(tg) < u.vocab) { dLogits[o + u32(tg)] = dLogits[o + u32(tg)] - u.dLoss; }
}`,
  // 1 - beta1 and 1 - beta2 come from the host in fp64: 1 - f32(0.999) would be 1.3e-5 off in relative terms.
  adamw: () => `struct U { n: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, wd: f32, c1: f32, c2: f32, omb1: f32,
           omb2: f32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['param', 'grad', 'm', 'v'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i >= u.n) { return; }
  let g = grad[i];
  let mi = u.beta1 * m[i] + u.omb1 * g;
  let vi = u.beta2 * v[i] + u.omb2 * g * g;
  m[i] = mi; v[i] = vi;
  let p = param[i];
  param[i] = p - u.lr * (mi / u.c1 / (sqrt(vi / u.c2) + u.eps) + u.wd * p);
}`,
  embeddingForward: () => `struct U { n: u32, width: u32, vocab: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['table', 'tokens', 'out'], ['f32', 'i32', 'f32'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i >= u.n * u.width) { return; }
  let tk = tokens[i / u.width];
  if (tk >= 0 && u32(tk) < u.vocab) { out[i] = table[u32(tk) * u.width + i % u.width]; }
}`,
  embeddingBackward: () => `struct U { n: u32, width: u32, vocab: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['dOut', 'tokens', 'dTable'], ['f32', 'i32', 'f32'])}
${FLAT}
${MAIN_EW} {
  let j = flat(wg, nwg, t);
  if (j >= u.width) { return; }
  for (var r = 0u; r < u.n; r++) {
    let tk = tokens[r];
    if (tk >= 0 && u32(tk) < u.vocab) { dTable[u32(tk) * u.width + j] += dOut[r * u.width + j]; }
  }
}`,
  // [B, L, H, D] <-> [B, H, L, D]; toHeads = 1 reads the token layout and writes the head layout.
  permuteHeads: () => `struct U { b: u32, h: u32, l: u32, d: u32, toHeads: u32, stride: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['src', 'dst'])}
${FLAT}
${MAIN_EW} {
  let i = flat(wg, nwg, t);
  if (i >= u.b * u.h * u.l * u.d) { return; }
  let x = i % u.d; let rest = i / u.d;
  let tk = rest % u.l; let hb = rest / u.l; let h = hb % u.h; let b = hb / u.h;   // i indexes [B, H, L, D]
  let tokIdx = ((b * u.l + tk) * u.h + h) * u.d + x;
  let headIdx = rest * u.stride + x;   // head rows may be wider than D
  if (u.toHeads != 0u) { dst[headIdx] = src[tokIdx]; } else { dst[tokIdx] = src[headIdx]; }
}`,
  sumSquaresPartial: () => `struct U { n: u32, per: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'partial'])}
${FLAT}
${MAIN_ROW} {
  let g = rowOf(wg, nwg);
  let start = g * u.per; let end = min(start + u.per, u.n);
  var s = 0.0;
  for (var i = start + t; i < end; i += ${RW}u) { s += x[i] * x[i]; }
  s = wsum(t, s);
  if (t == 0u) { partial[g] = s; }
}`,
  sumAccumulate: () => `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['partial', 'acc'])}
${FLAT}
${MAIN_ROW} {
  var s = 0.0;
  for (var i = t; i < u.n; i += ${RW}u) { s += partial[i]; }
  s = wsum(t, s);
  if (t == 0u) { acc[0] += s; }
}`,
  // Softmax over the first visible[row] entries of each row, in place, as layers.ts prefixSoftmaxRows: later
  // entries 0; -Infinity entries weigh 0; a row with no finite visible entry is all 0; a NaN or +Infinity among the
  // visible entries makes that row's visible part NaN (the reference's max is then NaN or +Infinity). Infinities
  // and NaN are recognised by their bits, never by float comparisons (compilers may assume finite values), and NaN
  // is written from bits passed as a uniform (a NaN constant is a WGSL compile error).
  prefixSoftmax: () => `struct U { rows: u32, cols: u32, nanBits: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['x', 'visible'], ['f32', 'i32'])}
${FLAT}
fn isSpecial(b: u32) -> bool { return (b & 0x7f800000u) == 0x7f800000u; }
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.cols;
  let n = u32(clamp(visible[row], 0, i32(u.cols)));
  var bad = 0.0; var any = 0.0; var m = -3.40282346638528859812e+38f;
  for (var j = t; j < n; j += ${RW}u) {
    let b = bitcast<u32>(x[o + j]);
    if (isSpecial(b)) { if (b != 0xff800000u) { bad = 1.0; } } else { m = max(m, x[o + j]); any = 1.0; }
  }
  let isBad = wmax(t, bad) > 0.5;
  let hasAny = wmax(t, any) > 0.5;
  let mx = wmax(t, m);
  var s = 0.0;
  for (var j = t; j < n; j += ${RW}u) { if (!isSpecial(bitcast<u32>(x[o + j]))) { s += exp(x[o + j] - mx); } }
  let total = wsum(t, s);
  for (var j = t; j < u.cols; j += ${RW}u) {
    var p = 0.0;
    if (j < n) {
      if (isBad) { p = bitcast<f32>(u.nanBits); }
      else if (hasAny && !isSpecial(bitcast<u32>(x[o + j]))) { p = exp(x[o + j] - mx) / total; }
    }
    x[o + j] = p;
  }
}`,
  // dx = p (dp - sum_j p_j dp_j) over the visible entries, 0 beyond them; OVERWRITES dx.
  prefixSoftmaxBackward: () => `struct U { rows: u32, cols: u32 }
@group(0) @binding(0) var<uniform> u: U;
${binds(['p', 'dp', 'dx', 'visible'], ['f32', 'f32', 'f32', 'i32'])}
${FLAT}
${MAIN_ROW} {
  let row = rowOf(wg, nwg);
  if (row >= u.rows) { return; }
  let o = row * u.cols;
  let n = u32(clamp(visible[row], 0, i32(u.cols)));
  var s = 0.0;
  for (var j = t; j < n; j += ${RW}u) { s += p[o + j] * dp[o + j]; }
  let dot = wsum(t, s);
  for (var j = t; j < u.cols; j += ${RW}u) { dx[o + j] = select(0.0, p[o + j] * (dp[o + j] - dot), j < n); }
}`,
};

/**
 * Dispatches the kernel `source` (compiled once under `key`). `alias` names an output binding that may share its
 * buffer with an input binding ([output index, input index, output name, input name]); when the buffers coincide
 * the in-place variant runs.
 */
export function runKernel(
  ctx: GpuContext,
  key: string,
  source: () => string,
  what: string,
  u: readonly (readonly ['u' | 'i' | 'f', number])[],
  tensors: readonly GpuTensor[],
  groups: number,
  alias?: readonly [number, number, string, string],
): void {
  let bound = tensors;
  if (alias && tensors[alias[0]]!.buffer === tensors[alias[1]]!.buffer) {
    const [o, , from, to] = alias;
    key += `-inplace-${from}`;
    const plain = source;
    source = () => inPlace(plain(), from, to);
    bound = tensors.filter((_, i) => i !== o);
  }
  ctx.dispatch(ctx.pipeline(key, source), what, packUniforms(u), bound, grid1d(ctx, groups));
}

function run(
  ctx: GpuContext,
  name: keyof typeof SOURCES,
  what: string,
  u: readonly (readonly ['u' | 'i' | 'f', number])[],
  tensors: GpuTensor[],
  groups: number,
  alias?: readonly [number, number, string, string],
): void {
  runKernel(ctx, `layer-${name}`, SOURCES[name]!, what, u, tensors, groups, alias);
}

export function need(what: string, t: GpuTensor, n: number, dtype: 'f32' | 'i32' = 'f32'): void {
  if (t.dtype !== dtype) throw new HypeError('shape', `${what} must be an ${dtype} tensor`);
  if (t.size < n) throw new HypeError('shape', `${what} has ${t.size} elements, needs ${n}`);
}

export const ew = (n: number) => Math.ceil(n / EW);

/** Uploads token ids after checking each is in [0, vocab) (kernels cannot throw, so ids are checked here). */
export function uploadTokens(ctx: GpuContext, tokens: Int32Array, vocab: number): GpuTensor {
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!(t >= 0 && t < vocab)) throw new HypeError('argument', `token ${t} at row ${i} is outside [0, ${vocab})`);
  }
  return ctx.upload(tokens);
}

/** Uploads per-row visible counts after checking each is in [0, cols] (kernels cannot throw). */
export function uploadVisible(ctx: GpuContext, visible: Int32Array, cols: number): GpuTensor {
  for (let r = 0; r < visible.length; r++) {
    const n = visible[r]!;
    if (!(n >= 0 && n <= cols)) throw new HypeError('argument', `visible ${n} at row ${r} is outside [0, ${cols}]`);
  }
  return ctx.upload(visible);
}

/** Row softmax over each row's first visible[row] entries of x [rows, cols], in place (layers.ts prefixSoftmaxRows). */
export function gpuPrefixSoftmaxRows(
  ctx: GpuContext,
  x: GpuTensor,
  rows: number,
  cols: number,
  visible: GpuTensor,
): void {
  need('prefixSoftmax x', x, rows * cols);
  need('prefixSoftmax visible', visible, rows, 'i32');
  const u = [
    ['u', rows],
    ['u', cols],
    ['u', 0x7fc00000],
  ] as const;
  run(ctx, 'prefixSoftmax', 'prefix softmax', u, [x, visible], rows);
}

/** Its backward from the probabilities p: dx = p (dp - sum(p dp)) on visible entries, 0 elsewhere; OVERWRITES dx. */
export function gpuPrefixSoftmaxRowsBackward(
  ctx: GpuContext,
  p: GpuTensor,
  dp: GpuTensor,
  dx: GpuTensor,
  rows: number,
  cols: number,
  visible: GpuTensor,
): void {
  for (const [w, t] of [
    ['p', p],
    ['dp', dp],
    ['dx', dx],
  ] as const)
    need(`prefixSoftmaxBackward ${w}`, t, rows * cols);
  need('prefixSoftmaxBackward visible', visible, rows, 'i32');
  const u = [
    ['u', rows],
    ['u', cols],
  ] as const;
  run(ctx, 'prefixSoftmaxBackward', 'prefix softmax backward', u, [p, dp, dx, visible], rows);
}

/** out = (x - mean) rstd gamma + beta per row; mean and rstd saved (see layers.ts). */
export function gpuLayerNormForward(
  ctx: GpuContext,
  x: GpuTensor,
  gamma: GpuTensor,
  beta: GpuTensor,
  out: GpuTensor,
  mean: GpuTensor,
  rstd: GpuTensor,
  rows: number,
  width: number,
  eps: number,
): void {
  for (const [w, t, n] of [
    ['x', x, rows * width],
    ['gamma', gamma, width],
    ['beta', beta, width],
    ['out', out, rows * width],
    ['mean', mean, rows],
    ['rstd', rstd, rows],
  ] as const)
    need(`layerNormForward ${w}`, t, n);
  const u = [
    ['u', rows],
    ['u', width],
    ['f', eps],
  ] as const;
  run(ctx, 'layerNormForward', 'layer norm forward', u, [x, gamma, beta, out, mean, rstd], rows);
}

/** Layer-norm backward: dx, dGamma and dBeta ACCUMULATE (see layers.ts). */
export function gpuLayerNormBackward(
  ctx: GpuContext,
  dOut: GpuTensor,
  x: GpuTensor,
  gamma: GpuTensor,
  mean: GpuTensor,
  rstd: GpuTensor,
  dx: GpuTensor,
  dGamma: GpuTensor,
  dBeta: GpuTensor,
  rows: number,
  width: number,
): void {
  for (const [w, t, n] of [
    ['dOut', dOut, rows * width],
    ['x', x, rows * width],
    ['gamma', gamma, width],
    ['mean', mean, rows],
    ['rstd', rstd, rows],
    ['dx', dx, rows * width],
    ['dGamma', dGamma, width],
    ['dBeta', dBeta, width],
  ] as const)
    need(`layerNormBackward ${w}`, t, n);
  const u = [
    ['u', rows],
    ['u', width],
  ] as const;
  run(ctx, 'layerNormBackwardRows', 'layer norm backward', u, [dOut, x, gamma, mean, rstd, dx], rows);
  run(ctx, 'layerNormBackwardParams', 'layer norm backward', u, [dOut, x, mean, rstd, dGamma, dBeta], ew(width));
}

/** out = gelu(x), n elements (out may be x). */
export function gpuGeluForward(ctx: GpuContext, x: GpuTensor, out: GpuTensor, n: number): void {
  need('geluForward x', x, n);
  need('geluForward out', out, n);
  run(ctx, 'geluForward', 'GELU forward', [['u', n]], [x, out], ew(n), [1, 0, 'out', 'x']);
}

/** dx = dOut gelu'(x), OVERWRITES (dx may be dOut). */
export function gpuGeluBackward(ctx: GpuContext, x: GpuTensor, dOut: GpuTensor, dx: GpuTensor, n: number): void {
  for (const [w, t] of [
    ['x', x],
    ['dOut', dOut],
    ['dx', dx],
  ] as const)
    need(`geluBackward ${w}`, t, n);
  run(ctx, 'geluBackward', 'GELU backward', [['u', n]], [x, dOut, dx], ew(n), [2, 1, 'dx', 'dOut']);
}

/** out[r, j] += bias[j]. */
export function gpuBiasAdd(ctx: GpuContext, out: GpuTensor, bias: GpuTensor, rows: number, width: number): void {
  need('biasAdd out', out, rows * width);
  need('biasAdd bias', bias, width);
  run(
    ctx,
    'biasAdd',
    'bias add',
    [
      ['u', rows],
      ['u', width],
    ],
    [out, bias],
    ew(rows * width),
  );
}

/** dBias[j] += sum over rows of dOut[r, j] (ACCUMULATES). */
export function gpuBiasBackward(ctx: GpuContext, dOut: GpuTensor, dBias: GpuTensor, rows: number, width: number) {
  need('biasBackward dOut', dOut, rows * width);
  need('biasBackward dBias', dBias, width);
  run(
    ctx,
    'biasBackward',
    'bias backward',
    [
      ['u', rows],
      ['u', width],
    ],
    [dOut, dBias],
    ew(width),
  );
}

/**
 * Per-row losses (natural log) into `losses`, and (when given) their mean into meanLoss[meanIndex] — on the GPU:
 * reading that slot back is the only transfer a training step needs.
 */
export function gpuSoftmaxCrossEntropyForward(
  ctx: GpuContext,
  logits: GpuTensor,
  targets: GpuTensor,
  losses: GpuTensor,
  meanLoss: GpuTensor | undefined,
  rows: number,
  vocab: number,
  meanIndex = 0,
): void {
  need('crossEntropy logits', logits, rows * vocab);
  need('crossEntropy targets', targets, rows, 'i32');
  need('crossEntropy losses', losses, rows);
  if (meanLoss) need('crossEntropy meanLoss', meanLoss, meanIndex + 1);
  const u = [
    ['u', rows],
    ['u', vocab],
  ] as const;
  run(ctx, 'crossEntropyForward', 'cross-entropy forward', u, [logits, targets, losses], rows);
  if (meanLoss)
    run(
      ctx,
      'meanOf',
      'cross-entropy mean',
      [
        ['u', rows],
        ['u', meanIndex],
      ],
      [losses, meanLoss],
      1,
    );
}

/** dLogits = (softmax - onehot) dLoss per row, OVERWRITES (dLogits may be logits). */
export function gpuSoftmaxCrossEntropyBackward(
  ctx: GpuContext,
  logits: GpuTensor,
  targets: GpuTensor,
  dLogits: GpuTensor,
  rows: number,
  vocab: number,
  dLoss: number,
): void {
  need('crossEntropy logits', logits, rows * vocab);
  need('crossEntropy targets', targets, rows, 'i32');
  need('crossEntropy dLogits', dLogits, rows * vocab);
  const u = [
    ['u', rows],
    ['u', vocab],
    ['f', dLoss],
  ] as const;
  run(ctx, 'crossEntropyBackward', 'cross-entropy backward', u, [logits, targets, dLogits], rows, [
    2,
    0,
    'dLogits',
    'logits',
  ]);
}

export interface GpuAdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step (bias corrections computed in fp64 on the host). */
  step: number;
}

/** One AdamW step in place on param, m, v (decoupled decay scaled by lr), as layers.ts. */
export function gpuAdamWStep(
  ctx: GpuContext,
  param: GpuTensor,
  grad: GpuTensor,
  m: GpuTensor,
  v: GpuTensor,
  n: number,
  h: GpuAdamWHyper,
): void {
  for (const [w, t] of [
    ['param', param],
    ['grad', grad],
    ['m', m],
    ['v', v],
  ] as const)
    need(`adamw ${w}`, t, n);
  const u = [
    ['u', n],
    ['f', h.lr],
    ['f', h.beta1],
    ['f', h.beta2],
    ['f', h.eps],
    ['f', h.weightDecay],
    ['f', 1 - Math.pow(h.beta1, h.step)],
    ['f', 1 - Math.pow(h.beta2, h.step)],
    ['f', 1 - h.beta1],
    ['f', 1 - h.beta2],
  ] as const;
  run(ctx, 'adamw', 'AdamW', u, [param, grad, m, v], ew(n));
}

/** out[r, :] = table[tokens[r], :]. */
export function gpuEmbeddingForward(
  ctx: GpuContext,
  table: GpuTensor,
  tokens: GpuTensor,
  out: GpuTensor,
  n: number,
  width: number,
  vocab: number,
): void {
  need('embedding table', table, vocab * width);
  need('embedding tokens', tokens, n, 'i32');
  need('embedding out', out, n * width);
  const u = [
    ['u', n],
    ['u', width],
    ['u', vocab],
  ] as const;
  run(ctx, 'embeddingForward', 'embedding forward', u, [table, tokens, out], ew(n * width));
}

/** dTable[tokens[r], :] += dOut[r, :] (ACCUMULATES, rows in order: deterministic). */
export function gpuEmbeddingBackward(
  ctx: GpuContext,
  dOut: GpuTensor,
  tokens: GpuTensor,
  dTable: GpuTensor,
  n: number,
  width: number,
  vocab: number,
): void {
  need('embedding dOut', dOut, n * width);
  need('embedding tokens', tokens, n, 'i32');
  need('embedding dTable', dTable, vocab * width);
  const u = [
    ['u', n],
    ['u', width],
    ['u', vocab],
  ] as const;
  run(ctx, 'embeddingBackward', 'embedding backward', u, [dOut, tokens, dTable], ew(width));
}

/** Values [rows, D] head rows of row stride `stride` span: the last row needs only its first D. */
export function stridedSpan(rows: number, D: number, stride: number): number {
  return rows === 0 ? 0 : (rows - 1) * stride + D;
}

/**
 * Token layout [B, L, H D] -> head layout [B, H, L, D] (tokensToHeads in tensor.ts), into `out`, whose head rows
 * may be wider than D (row stride `stride`; only D columns are written).
 */
export function gpuSplitHeads(
  ctx: GpuContext,
  x: GpuTensor,
  out: GpuTensor,
  B: number,
  H: number,
  L: number,
  D: number,
  stride = D,
) {
  permute(ctx, x, out, B, H, L, D, stride, 1);
}

/** Head layout [B, H, L, D] (head rows of stride `stride`) -> token layout [B, L, H D], into `out`. */
export function gpuMergeHeads(
  ctx: GpuContext,
  x: GpuTensor,
  out: GpuTensor,
  B: number,
  H: number,
  L: number,
  D: number,
  stride = D,
) {
  permute(ctx, x, out, B, H, L, D, stride, 0);
}

function permute(
  ctx: GpuContext,
  x: GpuTensor,
  out: GpuTensor,
  B: number,
  H: number,
  L: number,
  D: number,
  stride: number,
  to: number,
) {
  if (!(Number.isSafeInteger(stride) && stride >= D)) {
    throw new HypeError('shape', `head split/merge: the head row stride ${stride} must be an integer >= D = ${D}`);
  }
  const n = B * H * L * D;
  const heads = stridedSpan(B * H * L, D, stride);
  need('head permute input', x, to ? n : heads);
  need('head permute output', out, to ? heads : n);
  if (x.buffer === out.buffer) throw new HypeError('argument', 'head split/merge cannot run in place');
  const u = [
    ['u', B],
    ['u', H],
    ['u', L],
    ['u', D],
    ['u', to],
    ['u', stride],
  ] as const;
  run(ctx, 'permuteHeads', 'head split/merge', u, [x, out], ew(n));
}

/**
 * acc[0] += sum of x[i]^2 over n entries (for global gradient norms: call once per gradient tensor, then take the
 * square root of acc[0]). Two passes: per-workgroup partial sums, then one workgroup adds them up.
 */
export function gpuSumSquares(ctx: GpuContext, x: GpuTensor, n: number, acc: GpuTensor): void {
  need('sumSquares x', x, n);
  need('sumSquares acc', acc, 1);
  const per = 4096;
  const groups = Math.max(1, Math.ceil(n / per));
  const partial = ctx.empty([groups]);
  run(
    ctx,
    'sumSquaresPartial',
    'sum of squares',
    [
      ['u', n],
      ['u', per],
    ],
    [x, partial],
    groups,
  );
  run(ctx, 'sumAccumulate', 'sum of squares', [['u', groups]], [partial, acc], 1);
  ctx.release(partial);
}
