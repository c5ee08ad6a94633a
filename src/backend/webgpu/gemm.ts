/**
 * Tiled f32 gemm in WGSL: C = alpha op(A) op(B) + beta C, row-major, with leading dimensions, element offsets and an
 * optional batch (strided: matrix z starts at off + z * stride). op(A) is m x k, op(B) is k x n, C is m x n.
 * Same contract as Backend.gemm: beta = 0 overwrites C (NaN garbage in C does not leak through).
 *
 * Each 16 x 16 workgroup computes a 32 x 32 tile of C, 2 x 2 entries per invocation, staging 32 x 16 slices of A
 * and 16 x 32 of B in workgroup memory (4 KiB). One cached pipeline serves every transpose case.
 */
import { HypeError } from '../../errors.ts';
import { packUniforms, type GpuContext, type GpuTensor } from './context.ts';

export interface GemmLayout {
  lda: number;
  ldb: number;
  ldc: number;
  /** Element offsets of A, B and C inside their tensors (default 0). */
  offA?: number;
  offB?: number;
  offC?: number;
  /** Number of matrices (default 1) and the element strides between consecutive ones. */
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
}

// Per-invocation block R x R; a 16 x 16 workgroup covers a (16 R) x (16 R) tile of C. R = 2 keeps the shader small:
// lavapipe's JIT time grows with straight-line code (first use: R = 4 took about 13 s there, R = 2 about 6 s).
const R = 2;
const TM = 16 * R;
const TN = 16 * R;
const TK = 16;

function gemmSource(): string {
  const idx = (n: number) => Array.from({ length: n }, (_, i) => i);
  const accs = idx(R).flatMap((r) => idx(R).map((c) => `var acc${r}_${c} = 0.0;`));
  const loads = [
    ...idx(R).map((r) => `let a${r} = As[p * ${TM}u + lid.y + ${16 * r}u];`),
    ...idx(R).map((c) => `let b${c} = Bs[p * ${TN}u + lid.x + ${16 * c}u];`),
  ];
  const fmas = idx(R).flatMap((r) => idx(R).map((c) => `acc${r}_${c} = fma(a${r}, b${c}, acc${r}_${c});`));
  const stores = idx(R).flatMap((r) =>
    idx(R).map((c) => `store(row0 + lid.y + ${16 * r}u, col0 + lid.x + ${16 * c}u, cBase, acc${r}_${c});`),
  );
  // transA / transB are uniforms (one pipeline for all four cases); loads walk each operand's contiguous direction.
  return /* wgsl */ `
struct U { m: u32, n: u32, k: u32, lda: u32, ldb: u32, ldc: u32, offA: u32, offB: u32, offC: u32,
           strideA: u32, strideB: u32, strideC: u32, alpha: f32, beta: f32, transA: u32, transB: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
var<workgroup> As: array<f32, ${TK * TM}>;
var<workgroup> Bs: array<f32, ${TK * TN}>;

fn store(gi: u32, gj: u32, cBase: u32, acc: f32) {
  if (gi < u.m && gj < u.n) {
    let idx = cBase + gi * u.ldc + gj;
    var y = u.alpha * acc;
    if (u.beta != 0.0) { y = y + u.beta * C[idx]; }
    C[idx] = y;
  }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let row0 = wg.y * ${TM}u;
  let col0 = wg.x * ${TN}u;
  let aBase = u.offA + wg.z * u.strideA;
  let bBase = u.offB + wg.z * u.strideB;
  let cBase = u.offC + wg.z * u.strideC;
  let tid = lid.y * 16u + lid.x;
  ${accs.join('\n  ')}
  for (var p0 = 0u; p0 < u.k; p0 += ${TK}u) {
    for (var e = tid; e < ${TM * TK}u; e += 256u) {
      var i = e / ${TK}u; var p = e % ${TK}u;
      if (u.transA != 0u) { i = e % ${TM}u; p = e / ${TM}u; }
      let gi = row0 + i; let gp = p0 + p;
      var x = 0.0;
      if (gi < u.m && gp < u.k) { x = A[aBase + select(gi * u.lda + gp, gp * u.lda + gi, u.transA != 0u)]; }
      As[p * ${TM}u + i] = x;
    }
    for (var e = tid; e < ${TK * TN}u; e += 256u) {
      var j = e % ${TN}u; var p = e / ${TN}u;
      if (u.transB != 0u) { j = e / ${TK}u; p = e % ${TK}u; }
      let gj = col0 + j; let gp = p0 + p;
      var x = 0.0;
      if (gj < u.n && gp < u.k) { x = B[bBase + select(gp * u.ldb + gj, gj * u.ldb + gp, u.transB != 0u)]; }
      Bs[p * ${TN}u + j] = x;
    }
    workgroupBarrier();
    for (var p = 0u; p < ${TK}u; p++) {
      ${loads.join('\n      ')}
      ${fmas.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${stores.join('\n  ')}
}`;
}

function need(ok: boolean, message: string): void {
  if (!ok) throw new HypeError('shape', message);
}

/** Enqueues C = alpha op(A) op(B) + beta C on the GPU (see the module comment for the layout). */
export function gpuGemm(
  ctx: GpuContext,
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: GpuTensor,
  b: GpuTensor,
  beta: number,
  c: GpuTensor,
  layout: GemmLayout,
): void {
  const { lda, ldb, ldc, offA = 0, offB = 0, offC = 0, batch = 1, strideA = 0, strideB = 0, strideC = 0 } = layout;
  for (const [x, name] of [
    [m, 'm'],
    [n, 'n'],
    [k, 'k'],
    [batch, 'batch'],
  ] as const)
    need(Number.isInteger(x) && x >= 0, `gemm: ${name} must be a non-negative integer, got ${x}`);
  need(Number.isFinite(alpha) && Number.isFinite(beta), 'gemm: alpha and beta must be finite');
  for (const t of [a, b, c]) need(t.dtype === 'f32', 'gemm: A, B and C must be f32 tensors');
  const rowsA = transA ? k : m;
  const colsA = transA ? m : k;
  const rowsB = transB ? n : k;
  const colsB = transB ? k : n;
  need(lda >= Math.max(1, colsA), `gemm: lda = ${lda} is smaller than op(A)'s stored row width ${colsA}`);
  need(ldb >= Math.max(1, colsB), `gemm: ldb = ${ldb} is smaller than op(B)'s stored row width ${colsB}`);
  need(ldc >= Math.max(1, n), `gemm: ldc = ${ldc} is smaller than n = ${n}`);
  const last = (off: number, stride: number, rows: number, ld: number, cols: number) =>
    rows === 0 || cols === 0 ? 0 : off + (batch - 1) * stride + (rows - 1) * ld + cols;
  need(last(offA, strideA, rowsA, lda, colsA) <= a.size, `gemm: A has ${a.size} elements, too few for the layout`);
  need(last(offB, strideB, rowsB, ldb, colsB) <= b.size, `gemm: B has ${b.size} elements, too few for the layout`);
  need(last(offC, strideC, m, ldc, n) <= c.size, `gemm: C has ${c.size} elements, too few for the layout`);
  if (m === 0 || n === 0 || batch === 0) return;
  const pipe = ctx.pipeline(`gemm-r${R}`, gemmSource);
  const uniforms = packUniforms([
    ['u', m],
    ['u', n],
    ['u', k],
    ['u', lda],
    ['u', ldb],
    ['u', ldc],
    ['u', offA],
    ['u', offB],
    ['u', offC],
    ['u', strideA],
    ['u', strideB],
    ['u', strideC],
    ['f', alpha],
    ['f', beta],
    ['u', transA ? 1 : 0],
    ['u', transB ? 1 : 0],
  ]);
  ctx.dispatch(pipe, 'gemm', uniforms, [a, b, c], [Math.ceil(n / TN), Math.ceil(m / TM), batch]);
}
