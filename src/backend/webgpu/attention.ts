/**
 * Fused flash attention in WGSL, forward and backward, f32 accumulation; q, k, v and dOut stored in f32 or (with the
 * adapter's shader-f16) f16, everything else f32. Layouts as backend.ts:
 *   q [B, H, Lq, D]   k [B, Hkv, Lk, D]   v [B, Hkv, Lk, Dv]   out [B, H, Lq, Dv]   lse [B, H, Lq]
 * Position terms as data (CONTRACT): an optional per-head table [H, span], span = queryOffset + Lq + Lk - 1,
 * bias(h, i, l) = table[h * span + (D + Lk - 1)] with D = i + queryOffset - l; the backward returns dTable in the
 * same layout (summed over the batch, in f32 via compare-and-swap atomics, so its summation order is not fixed).
 *
 * Forward: one workgroup per (query tile, b * H + h); key tiles stream through workgroup memory with an online
 * softmax (O(L) memory). Backward, deterministic for dq, dk, dv (no atomics): delta = rowsum(dOut * out); one kernel
 * per query tile recomputes P from lse and accumulates dq (and dTable along the tile's diagonals); one kernel per key
 * tile of each kv head loops over its query heads (GQA) and query tiles and accumulates dk and dv.
 * Head dims are uniforms (loops with run-time bounds keep the shaders small, which matters for lavapipe's JIT);
 * workgroup arrays are sized per head-dim class, so pipelines are compiled once per (tile, head-dim class).
 * Masked logits are a finite sentinel (LOWEST), never an infinity: shader compilers may assume no infinities.
 */
import { HypeError } from '../../errors.ts';
import type { AttentionShape } from '../backend.ts';
import { packUniforms, type GpuContext, type GpuTensor } from './context.ts';

/** The CPU backends' attention shape, unchanged: one description of B, H, Hkv, Lq, Lk, D, Dv for every backend. */
export type GpuAttentionShape = AttentionShape;

export interface GpuAttentionOptions {
  causal: boolean;
  /** Softmax scale applied to q.k before the bias; always explicit. */
  scale: number;
  /** Absolute position of query row 0; default lk - lq. */
  queryOffset?: number;
  /** Per-head distance table [H, span] (f32), or none. */
  table?: GpuTensor;
  /** Whether the backward sums dTable (default true when a table is given); false skips those atomics. */
  gradTable?: boolean;
}

const wantsDTable = (opts: GpuAttentionOptions) => opts.table !== undefined && opts.gradTable !== false;

const WG = 64;
const MAX_HEAD_DIM = 256;
const NEG_INF_BITS = 0xff800000;

// ------------------------------------------------------------------------------------------------ WGSL pieces

const COMMON = /* wgsl */ `
struct U { lq: u32, lk: u32, heads: u32, kvHeads: u32, group: u32, d: u32, dv: u32, span: u32,
           qOff: i32, causal: u32, hasTable: u32, negInf: u32, scale: f32, br: u32, bc: u32, gradTable: u32 }
@group(0) @binding(0) var<uniform> u: U;
const LOWEST = -3.40282346638528859812e+38f;

fn visible(i: u32, l: u32) -> bool {
  if (i >= u.lq || l >= u.lk) { return false; }
  if (u.causal != 0u) { return i32(i) + u.qOff - i32(l) >= 0; }
  return true;
}

// One past the last key any query row in [i0, i0 + rows) can see.
fn keyEnd(i0: u32, rows: u32) -> u32 {
  if (u.causal == 0u) { return u.lk; }
  let last = i32(min(i0 + rows, u.lq)) - 1 + u.qOff + 1;
  return u32(clamp(last, 0, i32(u.lk)));
}

// The first query row that can see any key in [l0, ...).
fn queryStart(l0: u32) -> u32 {
  if (u.causal == 0u) { return 0u; }
  return u32(clamp(i32(l0) - u.qOff, 0, i32(u.lq)));
}
`;

const BIAS = /* wgsl */ `
fn biasAt(h: u32, i: u32, l: u32) -> f32 {
  if (u.hasTable == 0u) { return 0.0; }
  let dist = i32(i) + u.qOff - i32(l);
  return table[h * u.span + u32(dist + i32(u.lk) - 1)];
}
`;

interface Tiles {
  br: number;
  bc: number;
  dc: number;
  dvc: number;
}

/**
 * Loop bounds over the tile read the tile sizes from the uniforms rather than the constants: lavapipe's LLVM would
 * otherwise unroll every constant-trip loop, and the shaders took 15-30 s to JIT on first use.
 */
function dynamicBounds(src: string): string {
  return src
    .replaceAll('e < BR * BC;', 'e < u.br * u.bc;')
    .replaceAll('c < BC; c++', 'c < u.bc; c++')
    .replaceAll('r < BR; r++', 'r < u.br; r++')
    .replaceAll('g < BR + BC - 1u;', 'g < u.br + u.bc - 1u;');
}

/**
 * Storage format of q, k, v and dOut: loads always widen to f32 (a no-op for f32), and for f16 the declarations
 * change and the shader enables f16. Accumulation stays f32 either way; outputs and gradients are f32.
 */
function withStorage(src: string, st: 'f32' | 'f16'): string {
  const widened = src.replace(/\b(q|k|v|dOut)\[([^\]]+)\]/g, 'f32($1[$2])');
  if (st === 'f32') return widened;
  return (
    'enable f16;\n' +
    widened.replace(/var<storage, read> (q|k|v|dOut): array<f32>;/g, 'var<storage, read> $1: array<f16>;')
  );
}

function forwardSource(t: Tiles): string {
  const { br, bc, dc, dvc } = t;
  const kvc = Math.max(dc, dvc);
  return /* wgsl */ `${COMMON}
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
${BIAS}
const BR = ${br}u; const BC = ${bc}u; const DC = ${dc}u; const DVC = ${dvc}u; const KVC = ${kvc}u;
var<workgroup> qs: array<f32, ${br * dc}>;
var<workgroup> kv: array<f32, ${bc * kvc}>;
var<workgroup> s: array<f32, ${br * bc}>;
var<workgroup> oacc: array<f32, ${br * dvc}>;
var<workgroup> mrow: array<f32, ${br}>;
var<workgroup> lrow: array<f32, ${br}>;
var<workgroup> arow: array<f32, ${br}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) t: u32) {
  let bh = wg.y; let h = bh % u.heads; let b = bh / u.heads; let kvh = h / u.group;
  let i0 = wg.x * BR; let d = u.d; let dv = u.dv;
  let qBase = bh * u.lq * d;
  let kBase = (b * u.kvHeads + kvh) * u.lk * d;
  let vBase = (b * u.kvHeads + kvh) * u.lk * dv;
  for (var e = t; e < BR * d; e += ${WG}u) {
    let r = e / d; let x = e % d; let i = i0 + r;
    var val = 0.0; if (i < u.lq) { val = q[qBase + i * d + x]; }
    qs[r * DC + x] = val;
  }
  for (var e = t; e < BR * dv; e += ${WG}u) { oacc[(e / dv) * DVC + e % dv] = 0.0; }
  if (t < BR) { mrow[t] = LOWEST; lrow[t] = 0.0; }
  let lEnd = keyEnd(i0, BR);
  for (var l0 = 0u; l0 < lEnd; l0 += BC) {
    workgroupBarrier();
    for (var e = t; e < BC * d; e += ${WG}u) {
      let c = e / d; let x = e % d; let l = l0 + c;
      var val = 0.0; if (l < u.lk) { val = k[kBase + l * d + x]; }
      kv[c * KVC + x] = val;
    }
    workgroupBarrier();
    for (var e = t; e < BR * BC; e += ${WG}u) {
      let r = e / BC; let c = e % BC; let i = i0 + r; let l = l0 + c;
      var val = LOWEST;
      if (visible(i, l)) {
        var dot = 0.0;
        for (var x = 0u; x < d; x++) { dot = fma(qs[r * DC + x], kv[c * KVC + x], dot); }
        val = u.scale * dot + biasAt(h, i, l);
      }
      s[e] = val;
    }
    workgroupBarrier();
    if (t < BR) {
      let mOld = mrow[t];
      var mNew = mOld;
      for (var c = 0u; c < BC; c++) { mNew = max(mNew, s[t * BC + c]); }
      var sum = 0.0;
      for (var c = 0u; c < BC; c++) {
        let x = s[t * BC + c];
        var p = 0.0; if (x != LOWEST) { p = exp(x - mNew); }
        s[t * BC + c] = p;
        sum += p;
      }
      var alpha = 0.0; if (mOld != LOWEST) { alpha = exp(mOld - mNew); }
      lrow[t] = lrow[t] * alpha + sum; mrow[t] = mNew; arow[t] = alpha;
    }
    workgroupBarrier();
    for (var e = t; e < BC * dv; e += ${WG}u) {
      let c = e / dv; let x = e % dv; let l = l0 + c;
      var val = 0.0; if (l < u.lk) { val = v[vBase + l * dv + x]; }
      kv[c * KVC + x] = val;
    }
    workgroupBarrier();
    for (var e = t; e < BR * dv; e += ${WG}u) {
      let r = e / dv; let x = e % dv;
      var a = oacc[r * DVC + x] * arow[r];
      for (var c = 0u; c < BC; c++) { a = fma(s[r * BC + c], kv[c * KVC + x], a); }
      oacc[r * DVC + x] = a;
    }
  }
  workgroupBarrier();
  for (var e = t; e < BR * dv; e += ${WG}u) {
    let r = e / dv; let x = e % dv; let i = i0 + r;
    if (i < u.lq) {
      let L = lrow[r];
      var o = 0.0; if (L > 0.0) { o = oacc[r * DVC + x] / L; }
      out[bh * u.lq * dv + i * dv + x] = o;
    }
  }
  if (t < BR && i0 + t < u.lq) {
    var val = bitcast<f32>(u.negInf);
    if (lrow[t] > 0.0) { val = mrow[t] + log(lrow[t]); }
    lse[bh * u.lq + i0 + t] = val;
  }
}`;
}

function deltaSource(): string {
  return /* wgsl */ `${COMMON}
@group(0) @binding(1) var<storage, read> dOut: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> delta: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32) {
  let row = (wg.x + wg.y * nwg.x) * ${WG}u + t;
  if (row >= u.lq) { return; }   // u.lq carries the total row count B * H * Lq here
  var acc = 0.0;
  for (var x = 0u; x < u.dv; x++) { acc = fma(dOut[row * u.dv + x], out[row * u.dv + x], acc); }
  delta[row] = acc;
}`;
}

// Shared by both backward kernels: P and dS of one (query row r, key column c) pair, given the tiles in place.
const PAIR = /* wgsl */ `
fn logitAt(h: u32, i: u32, l: u32, r: u32, c: u32) -> f32 {
  var dot = 0.0;
  for (var x = 0u; x < u.d; x++) { dot = fma(qs[r * DC + x], ks[c * KC + x], dot); }
  return u.scale * dot + biasAt(h, i, l);
}
fn dpAt(r: u32, c: u32) -> f32 {
  var dot = 0.0;
  for (var x = 0u; x < u.dv; x++) { dot = fma(dos[r * DVC + x], vs[c * VC + x], dot); }
  return dot;
}
`;

function rowLoads(): string {
  // Loads query rows i0.. of q and dOut plus lse and delta into workgroup memory (rows past Lq: zeros, not ok).
  return /* wgsl */ `
    for (var e = t; e < BR * u.d; e += ${WG}u) {
      let r = e / u.d; let x = e % u.d; let i = i0 + r;
      var val = 0.0; if (i < u.lq) { val = q[qBase + i * u.d + x]; }
      qs[r * DC + x] = val;
    }
    for (var e = t; e < BR * u.dv; e += ${WG}u) {
      let r = e / u.dv; let x = e % u.dv; let i = i0 + r;
      var val = 0.0; if (i < u.lq) { val = dOut[oBase + i * u.dv + x]; }
      dos[r * DVC + x] = val;
    }
    if (t < BR) {
      let i = i0 + t;
      var ok = 0u; var lv = 0.0; var dl = 0.0;
      if (i < u.lq) {
        lv = lse[bh * u.lq + i]; dl = delta[bh * u.lq + i];
        if (bitcast<u32>(lv) != u.negInf) { ok = 1u; } else { lv = 0.0; }
      }
      lok[t] = ok; lses[t] = lv; dels[t] = dl;
    }`;
}

const BWD_BINDINGS = /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<f32>;
@group(0) @binding(5) var<storage, read> dOut: array<f32>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read> delta: array<f32>;
`;

function dqSource(t: Tiles): string {
  const { br, bc, dc, dvc } = t;
  const kvc = Math.max(dc, dvc);
  // ks and vs alias one buffer (K and V tiles take turns), so the PAIR helpers read the same array.
  return /* wgsl */ `${COMMON}${BWD_BINDINGS}
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;
@group(0) @binding(9) var<storage, read_write> dtab: array<atomic<u32>>;
${BIAS}
const BR = ${br}u; const BC = ${bc}u; const DC = ${dc}u; const DVC = ${dvc}u; const KC = ${kvc}u; const VC = ${kvc}u;
var<workgroup> qs: array<f32, ${br * dc}>;
var<workgroup> dos: array<f32, ${br * dvc}>;
var<workgroup> ks: array<f32, ${bc * kvc}>;
var<workgroup> pt: array<f32, ${br * bc}>;
var<workgroup> dpt: array<f32, ${br * bc}>;
var<workgroup> dqacc: array<f32, ${br * dc}>;
var<workgroup> lses: array<f32, ${br}>;
var<workgroup> dels: array<f32, ${br}>;
var<workgroup> lok: array<u32, ${br}>;
${PAIR.replace('vs[c * VC + x]', 'ks[c * VC + x]')}
fn atomicAddF(idx: u32, val: f32) {
  var old = atomicLoad(&dtab[idx]);
  loop {
    let r = atomicCompareExchangeWeak(&dtab[idx], old, bitcast<u32>(bitcast<f32>(old) + val));
    if (r.exchanged) { break; }
    old = r.old_value;
  }
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) t: u32) {
  let bh = wg.y; let h = bh % u.heads; let b = bh / u.heads; let kvh = h / u.group;
  let i0 = wg.x * BR;
  let qBase = bh * u.lq * u.d; let oBase = bh * u.lq * u.dv;
  let kBase = (b * u.kvHeads + kvh) * u.lk * u.d;
  let vBase = (b * u.kvHeads + kvh) * u.lk * u.dv;
  ${rowLoads()}
  for (var e = t; e < BR * u.d; e += ${WG}u) { dqacc[(e / u.d) * DC + e % u.d] = 0.0; }
  let lEnd = keyEnd(i0, BR);
  for (var l0 = 0u; l0 < lEnd; l0 += BC) {
    workgroupBarrier();
    for (var e = t; e < BC * u.dv; e += ${WG}u) {
      let c = e / u.dv; let x = e % u.dv; let l = l0 + c;
      var val = 0.0; if (l < u.lk) { val = v[vBase + l * u.dv + x]; }
      ks[c * VC + x] = val;
    }
    workgroupBarrier();
    for (var e = t; e < BR * BC; e += ${WG}u) {
      let r = e / BC; let c = e % BC;
      var dp = 0.0; if (lok[r] != 0u && visible(i0 + r, l0 + c)) { dp = dpAt(r, c); }
      dpt[e] = dp;
    }
    workgroupBarrier();
    for (var e = t; e < BC * u.d; e += ${WG}u) {
      let c = e / u.d; let x = e % u.d; let l = l0 + c;
      var val = 0.0; if (l < u.lk) { val = k[kBase + l * u.d + x]; }
      ks[c * KC + x] = val;
    }
    workgroupBarrier();
    for (var e = t; e < BR * BC; e += ${WG}u) {
      let r = e / BC; let c = e % BC; let i = i0 + r; let l = l0 + c;
      var ds = 0.0;
      if (lok[r] != 0u && visible(i, l)) {
        let p = exp(logitAt(h, i, l, r, c) - lses[r]);
        ds = p * (dpt[e] - dels[r]);
      }
      pt[e] = ds;
    }
    workgroupBarrier();
    for (var e = t; e < BR * u.d; e += ${WG}u) {
      let r = e / u.d; let x = e % u.d;
      var a = dqacc[r * DC + x];
      for (var c = 0u; c < BC; c++) { a = fma(pt[r * BC + c], ks[c * KC + x], a); }
      dqacc[r * DC + x] = a;
    }
    if (u.gradTable != 0u) {
      // Diagonal g of the tile holds the pairs with r - c = g - (BC - 1): one distance each.
      for (var g = t; g < BR + BC - 1u; g += ${WG}u) {
        var sum = 0.0; var seen = false;
        for (var r = 0u; r < BR; r++) {
          let c = i32(r) - (i32(g) - i32(BC - 1u));
          if (c >= 0 && c < i32(BC)) {
            if (lok[r] != 0u && visible(i0 + r, l0 + u32(c))) { seen = true; sum += pt[r * BC + u32(c)]; }
          }
        }
        if (seen) {
          let dist = i32(i0) - i32(l0) + u.qOff + i32(g) - i32(BC - 1u);
          atomicAddF(h * u.span + u32(dist + i32(u.lk) - 1), sum);
        }
      }
    }
  }
  workgroupBarrier();
  for (var e = t; e < BR * u.d; e += ${WG}u) {
    let r = e / u.d; let x = e % u.d; let i = i0 + r;
    if (i < u.lq) { dq[qBase + i * u.d + x] = u.scale * dqacc[r * DC + x]; }
  }
}`;
}

function dkvSource(t: Tiles): string {
  const { br, bc, dc, dvc } = t;
  return /* wgsl */ `${COMMON}${BWD_BINDINGS}
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;
${BIAS}
const BR = ${br}u; const BC = ${bc}u; const DC = ${dc}u; const DVC = ${dvc}u; const KC = ${dc}u; const VC = ${dvc}u;
var<workgroup> ks: array<f32, ${bc * dc}>;
var<workgroup> vs: array<f32, ${bc * dvc}>;
var<workgroup> qs: array<f32, ${br * dc}>;
var<workgroup> dos: array<f32, ${br * dvc}>;
var<workgroup> pt: array<f32, ${br * bc}>;
var<workgroup> dst: array<f32, ${br * bc}>;
var<workgroup> dkacc: array<f32, ${bc * dc}>;
var<workgroup> dvacc: array<f32, ${bc * dvc}>;
var<workgroup> lses: array<f32, ${br}>;
var<workgroup> dels: array<f32, ${br}>;
var<workgroup> lok: array<u32, ${br}>;
${PAIR}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) t: u32) {
  let bkv = wg.y; let kvh = bkv % u.kvHeads; let b = bkv / u.kvHeads;
  let l0 = wg.x * BC;
  let kBase = bkv * u.lk * u.d; let vBase = bkv * u.lk * u.dv;
  for (var e = t; e < BC * u.d; e += ${WG}u) {
    let c = e / u.d; let x = e % u.d; let l = l0 + c;
    var val = 0.0; if (l < u.lk) { val = k[kBase + l * u.d + x]; }
    ks[c * KC + x] = val; dkacc[c * DC + x] = 0.0;
  }
  for (var e = t; e < BC * u.dv; e += ${WG}u) {
    let c = e / u.dv; let x = e % u.dv; let l = l0 + c;
    var val = 0.0; if (l < u.lk) { val = v[vBase + l * u.dv + x]; }
    vs[c * VC + x] = val; dvacc[c * DVC + x] = 0.0;
  }
  let iBeg = (queryStart(l0) / BR) * BR;
  for (var gh = 0u; gh < u.group; gh++) {
    let h = kvh * u.group + gh; let bh = b * u.heads + h;
    let qBase = bh * u.lq * u.d; let oBase = bh * u.lq * u.dv;
    for (var i0 = iBeg; i0 < u.lq; i0 += BR) {
      workgroupBarrier();
      ${rowLoads()}
      workgroupBarrier();
      for (var e = t; e < BR * BC; e += ${WG}u) {
        let r = e / BC; let c = e % BC; let i = i0 + r; let l = l0 + c;
        var p = 0.0; var ds = 0.0;
        if (lok[r] != 0u && visible(i, l)) {
          p = exp(logitAt(h, i, l, r, c) - lses[r]);
          ds = p * (dpAt(r, c) - dels[r]);
        }
        pt[e] = p; dst[e] = ds;
      }
      workgroupBarrier();
      for (var e = t; e < BC * u.dv; e += ${WG}u) {
        let c = e / u.dv; let x = e % u.dv;
        var a = dvacc[c * DVC + x];
        for (var r = 0u; r < BR; r++) { a = fma(pt[r * BC + c], dos[r * DVC + x], a); }
        dvacc[c * DVC + x] = a;
      }
      for (var e = t; e < BC * u.d; e += ${WG}u) {
        let c = e / u.d; let x = e % u.d;
        var a = dkacc[c * DC + x];
        for (var r = 0u; r < BR; r++) { a = fma(dst[r * BC + c], qs[r * DC + x], a); }
        dkacc[c * DC + x] = a;
      }
    }
  }
  workgroupBarrier();
  for (var e = t; e < BC * u.d; e += ${WG}u) {
    let c = e / u.d; let x = e % u.d; let l = l0 + c;
    if (l < u.lk) { dk[kBase + l * u.d + x] = u.scale * dkacc[c * DC + x]; }
  }
  for (var e = t; e < BC * u.dv; e += ${WG}u) {
    let c = e / u.dv; let x = e % u.dv; let l = l0 + c;
    if (l < u.lk) { dv[vBase + l * u.dv + x] = dvacc[c * DVC + x]; }
  }
}`;
}

// ------------------------------------------------------------------------------------------------ host side

/** Head dims are rounded up to a class (multiple of 16) so nearby dims share one compiled pipeline. */
function dimClass(d: number): number {
  return Math.ceil(d / 16) * 16;
}

type Kernel = 'forward' | 'dq' | 'dkv';

function sharedBytes(kind: Kernel, br: number, bc: number, dc: number, dvc: number): number {
  const kvc = Math.max(dc, dvc);
  switch (kind) {
    case 'forward':
      return 4 * (br * dc + bc * kvc + br * bc + br * dvc + 3 * br);
    case 'dq':
      return 4 * (2 * br * dc + br * dvc + bc * kvc + 2 * br * bc + 3 * br);
    case 'dkv':
      return 4 * (2 * bc * dc + 2 * bc * dvc + br * dc + br * dvc + 2 * br * bc + 3 * br);
  }
}

/** The largest square tile (32, 16, 8, 4) whose workgroup memory fits the adapter; refuses naming the limit. */
function chooseTiles(ctx: GpuContext, kind: Kernel, d: number, dv: number): Tiles {
  const dc = dimClass(d);
  const dvc = dimClass(dv);
  const limit = ctx.limits.maxComputeWorkgroupStorageSize;
  for (const tile of [32, 16, 8, 4]) {
    if (sharedBytes(kind, tile, tile, dc, dvc) <= limit) return { br: tile, bc: tile, dc, dvc };
  }
  ctx.checkWorkgroupStorage(sharedBytes(kind, 4, 4, dc, dvc), `attention ${kind} with head dims ${d}/${dv}`);
  throw new Error('unreachable');
}

function bad(message: string): never {
  throw new HypeError('shape', message);
}

interface Checked {
  offset: number;
  span: number;
  group: number;
}

function validate(
  shape: GpuAttentionShape,
  opts: GpuAttentionOptions,
  tensors: Record<string, [GpuTensor, number]>,
): Checked {
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  for (const [name, x] of Object.entries(shape))
    if (!Number.isInteger(x) || x < 1) bad(`attention: shape.${name} must be a positive integer, got ${x}`);
  if (H % Hkv !== 0) bad(`attention: heads (${H}) must be a multiple of kvHeads (${Hkv})`);
  if (d > MAX_HEAD_DIM || dv > MAX_HEAD_DIM)
    bad(`attention: head dims ${d}/${dv} exceed the WebGPU kernels' maximum of ${MAX_HEAD_DIM}`);
  if (!Number.isFinite(opts.scale))
    throw new HypeError('argument', `attention: scale must be a finite number, got ${opts.scale}`);
  const offset = opts.queryOffset ?? lk - lq;
  if (!Number.isInteger(offset) || Math.abs(offset) >= 2 ** 30)
    throw new HypeError('argument', `attention: queryOffset must be an integer below 2^30 in size, got ${offset}`);
  // q, k, v and dOut share one storage format (f32, or f16 with f32 accumulation); out, lse and the table are f32.
  const st = tensors.q![0].dtype;
  if (st !== 'f32' && st !== 'f16') bad('attention: q must be an f32 or f16 tensor');
  for (const [name, [t, n]] of Object.entries(tensors)) {
    const want = name === 'out' || name === 'lse' ? 'f32' : st;
    if (t.dtype !== want) bad(`attention: ${name} must be an ${want} tensor (q is ${st}), got ${t.dtype}`);
    if (t.size !== n) bad(`attention: ${name} has ${t.size} elements, the shape needs ${n}`);
  }
  const span = offset + lq + lk - 1;
  if (opts.table) {
    if (!opts.causal && offset < 0)
      throw new HypeError('argument', 'attention: a non-causal distance table needs queryOffset >= 0');
    if (opts.table.dtype !== 'f32') bad('attention: the distance table must be an f32 tensor');
    if (opts.table.size !== H * Math.max(span, 0))
      bad(`attention: the distance table has ${opts.table.size} values, needs H * span = ${H} * ${span}`);
  }
  return { offset, span: Math.max(span, 0), group: H / Hkv };
}

function uniforms(
  shape: GpuAttentionShape,
  opts: GpuAttentionOptions,
  c: Checked,
  tiles: Tiles | null,
  rows?: number,
): ArrayBuffer {
  return packUniforms([
    ['u', rows ?? shape.lq],
    ['u', shape.lk],
    ['u', shape.heads],
    ['u', shape.kvHeads],
    ['u', c.group],
    ['u', shape.headDim],
    ['u', shape.valueDim],
    ['u', c.span],
    ['i', c.offset],
    ['u', opts.causal ? 1 : 0],
    ['u', opts.table ? 1 : 0],
    ['u', NEG_INF_BITS],
    ['f', opts.scale],
    ['u', tiles?.br ?? 0],
    ['u', tiles?.bc ?? 0],
    ['u', wantsDTable(opts) ? 1 : 0],
  ]);
}

const dummies = new WeakMap<GpuContext, GpuTensor>();
function tableOrDummy(ctx: GpuContext, opts: GpuAttentionOptions): GpuTensor {
  if (opts.table) return opts.table;
  let t = dummies.get(ctx);
  if (!t) {
    t = ctx.zeros([1]);
    dummies.set(ctx, t);
  }
  return t;
}

function sizes(s: GpuAttentionShape) {
  return {
    q: s.batch * s.heads * s.lq * s.headDim,
    k: s.batch * s.kvHeads * s.lk * s.headDim,
    v: s.batch * s.kvHeads * s.lk * s.valueDim,
    o: s.batch * s.heads * s.lq * s.valueDim,
    lse: s.batch * s.heads * s.lq,
  };
}

function tileKey(kind: string, t: Tiles, st: 'f32' | 'f16'): string {
  return `attention-${kind}-${t.br}x${t.bc}-d${t.dc}-dv${t.dvc}-${st}`;
}

/** Enqueues the fused forward; returns new tensors out [B, H, Lq, Dv] and lse [B, H, Lq]. */
export function gpuAttentionForward(
  ctx: GpuContext,
  shape: GpuAttentionShape,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  opts: GpuAttentionOptions,
): { out: GpuTensor; lse: GpuTensor } {
  const n = sizes(shape);
  const c = validate(shape, opts, { q: [q, n.q], k: [k, n.k], v: [v, n.v] });
  const tiles = chooseTiles(ctx, 'forward', shape.headDim, shape.valueDim);
  const out = ctx.empty([shape.batch, shape.heads, shape.lq, shape.valueDim]);
  const lse = ctx.empty([shape.batch, shape.heads, shape.lq]);
  const st = q.dtype as 'f32' | 'f16';
  const pipe = ctx.pipeline(tileKey('forward', tiles, st), () => withStorage(dynamicBounds(forwardSource(tiles)), st));
  ctx.dispatch(
    pipe,
    'attention forward',
    uniforms(shape, opts, c, tiles),
    [q, k, v, tableOrDummy(ctx, opts), out, lse],
    [Math.ceil(shape.lq / tiles.br), shape.batch * shape.heads, 1],
  );
  return { out, lse };
}

/** 1-D grids folded into two dimensions so no dimension exceeds the adapter's limit. */
export function grid1d(ctx: GpuContext, groups: number): [number, number, number] {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.min(groups, max);
  return [x, Math.ceil(groups / Math.max(x, 1)), 1];
}

export interface GpuAttentionGrads {
  dq: GpuTensor;
  dk: GpuTensor;
  dv: GpuTensor;
  /** dTable [H, span] (summed over the batch) when a table was given and gradTable is not false. */
  dTable?: GpuTensor;
}

/** Enqueues the fused backward from the forward's out and lse; returns new gradient tensors. */
export function gpuAttentionBackward(
  ctx: GpuContext,
  shape: GpuAttentionShape,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  out: GpuTensor,
  lse: GpuTensor,
  dOut: GpuTensor,
  opts: GpuAttentionOptions,
): GpuAttentionGrads {
  const n = sizes(shape);
  const c = validate(shape, opts, {
    q: [q, n.q],
    k: [k, n.k],
    v: [v, n.v],
    out: [out, n.o],
    lse: [lse, n.lse],
    dOut: [dOut, n.o],
  });
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const st = q.dtype as 'f32' | 'f16';
  const delta = ctx.empty([B, H, lq]);
  ctx.dispatch(
    ctx.pipeline(`attention-delta-${st}`, () => withStorage(deltaSource(), st)),
    'attention backward (delta)',
    uniforms(shape, opts, c, null, B * H * lq),
    [dOut, out, delta],
    grid1d(ctx, Math.ceil((B * H * lq) / WG)),
  );
  const table = tableOrDummy(ctx, opts);
  const dq = ctx.empty([B, H, lq, d]);
  // dTable accumulates atomically, so it starts at zero; without a table a scratch word stands in for it.
  const dTable = wantsDTable(opts) ? ctx.zeros([H, c.span]) : undefined;
  const dTableOrScratch = dTable ?? ctx.empty([1]);
  const tq = chooseTiles(ctx, 'dq', d, dv);
  ctx.dispatch(
    ctx.pipeline(tileKey('dq', tq, st), () => withStorage(dynamicBounds(dqSource(tq)), st)),
    'attention backward (dq)',
    uniforms(shape, opts, c, tq),
    [q, k, v, table, dOut, lse, delta, dq, dTableOrScratch],
    [Math.ceil(lq / tq.br), B * H, 1],
  );
  const dk = ctx.empty([B, Hkv, lk, d]);
  const dvT = ctx.empty([B, Hkv, lk, dv]);
  const tk = chooseTiles(ctx, 'dkv', d, dv);
  ctx.dispatch(
    ctx.pipeline(tileKey('dkv', tk, st), () => withStorage(dynamicBounds(dkvSource(tk)), st)),
    'attention backward (dk, dv)',
    uniforms(shape, opts, c, tk),
    [q, k, v, table, dOut, lse, delta, dk, dvT],
    [Math.ceil(lk / tk.bc), B * Hkv, 1],
  );
  ctx.release(delta);
  if (!dTable) ctx.release(dTableOrScratch);
  return dTable ? { dq, dk, dv: dvT, dTable } : { dq, dk, dv: dvT };
}
