/**
 * The reference backend: plain loops in the arrays' own dtype (fp64 or fp32). It is the test oracle and the
 * portable fallback when the native addon is unavailable. A host backend: its tensor handles are the typed arrays
 * themselves (host-memory.ts).
 */
import type { FloatArray } from '../tensor.ts';
import type {
  AttentionForward,
  AttentionGrads,
  AttentionOptions,
  AttentionShape,
  Backend,
  HouseholderWalk,
} from './backend.ts';
import { referenceAttentionBackward, referenceAttentionForward } from './reference-attention.ts';
import { hostBf16 } from './bf16-hooks.ts';
import { HostBackendBase } from './host-memory.ts';
import { referenceLayerOps } from './layers.ts';
import { referenceHouseholderWalk } from './householder-walk.ts';
import { scoreAttention, type ExplicitAttention, type ScoreKernels } from './score-attention.ts';
import {
  checkAttentionLse,
  validateAttentionBackward,
  validateAttentionForward,
  validateGemm,
  validateGemmOutput,
} from './validate.ts';

/** Row-major C = alpha op(A) op(B) + beta C, summing each entry in a JS double. */
export function referenceGemm(
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
  validateGemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c);
  validateGemmOutput(m, n, c, ldc);
  // Each row of C is summed in fp64 (one JS double per entry, rounded once on store). The loop order keeps the
  // innermost loop on contiguous memory: rows of B when B is not transposed (i-p-j), else dot products of rows.
  const row = new Float64Array(n);
  for (let i = 0; i < m; i++) {
    if (transB) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        const bj = j * ldb;
        if (transA) for (let p = 0; p < k; p++) acc += a[p * lda + i]! * b[bj + p]!;
        else for (let p = 0, ai = i * lda; p < k; p++) acc += a[ai + p]! * b[bj + p]!;
        row[j] = acc;
      }
    } else {
      row.fill(0);
      for (let p = 0; p < k; p++) {
        const av = transA ? a[p * lda + i]! : a[i * lda + p]!;
        if (av === 0) continue;
        const bp = p * ldb;
        for (let j = 0; j < n; j++) row[j] += av * b[bp + j]!;
      }
    }
    const ci = i * ldc;
    // beta = 0 overwrites (so NaN garbage in C does not leak through), as BLAS does.
    for (let j = 0; j < n; j++) c[ci + j] = beta === 0 ? alpha * row[j]! : alpha * row[j]! + beta * c[ci + j]!;
  }
}

/** The reference kernels of attention over explicit scores: plain loops in the work arrays' dtype. */
export const referenceScoreKernels: ScoreKernels = {
  gemm: referenceGemm,
  prefixSoftmaxRows: referenceLayerOps.prefixSoftmaxRows,
};

/**
 * The gemm for an encoding's own products on work arrays like `like`: the backend's for fp32 (the native blocked
 * sgemm when the model runs natively), the reference's fp64-summing loops for fp64 (the native gemm refuses fp64).
 */
export function gemmFor(backend: Backend, like: FloatArray): Backend['gemm'] {
  return like instanceof Float32Array ? backend.gemm.bind(backend) : referenceGemm;
}

export class ReferenceBackend extends HostBackendBase implements Backend {
  readonly name: string = 'reference';

  // The non-attention layer ops (plain loops in layers.ts), so this backend offers the complete set.
  readonly layerNormForward = referenceLayerOps.layerNormForward;
  readonly layerNormBackward = referenceLayerOps.layerNormBackward;
  readonly geluForward = referenceLayerOps.geluForward;
  readonly geluBackward = referenceLayerOps.geluBackward;
  readonly softmaxCrossEntropyForward = referenceLayerOps.softmaxCrossEntropyForward;
  readonly softmaxCrossEntropyBackward = referenceLayerOps.softmaxCrossEntropyBackward;
  readonly prefixSoftmaxRows = referenceLayerOps.prefixSoftmaxRows;
  readonly adamwStep = referenceLayerOps.adamwStep;
  readonly embeddingForward = referenceLayerOps.embeddingForward;
  readonly embeddingBackward = referenceLayerOps.embeddingBackward;
  readonly biasAdd = referenceLayerOps.biasAdd;
  readonly biasBackward = referenceLayerOps.biasBackward;

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
    referenceGemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  gemmBf16(...a: Parameters<Backend['gemmBf16']>): void {
    hostBf16().gemm(false, ...a);
  }

  attentionForward(
    shape: AttentionShape,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    opts: AttentionOptions,
  ): AttentionForward {
    validateAttentionForward(shape, q, k, v, opts);
    if (opts.operands === 'bf16') return hostBf16().forward(false, shape, q, k, v, opts);
    const result = referenceAttentionForward(shape, q, k, v, opts);
    checkAttentionLse(result.lse, shape, opts);
    return result;
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
    validateAttentionBackward(shape, q, k, v, out, lse, dOut, opts);
    if (opts.operands === 'bf16') return hostBf16().backward(false, shape, q, k, v, out, lse, dOut, opts);
    return referenceAttentionBackward(shape, q, k, v, out, lse, dOut, opts);
  }

  scoreAttention(...a: Parameters<Backend['scoreAttention']>): ExplicitAttention {
    return scoreAttention(() => referenceScoreKernels, ...a);
  }

  // ---- The Householder walk: plain fp64 loops (householder-walk.ts).
  householderWalk(...a: Parameters<Backend['householderWalk']>): HouseholderWalk {
    return referenceHouseholderWalk(...a);
  }
}
