/**
 * The native addon's layer operations (native/layers.cc) behind the LayerOps signatures of layers.ts, with the
 * same overwrite/accumulate conventions. Every call is validated here first (sizes, lengths, index ranges, finite
 * scalars), so native code only ever sees inputs it can trust; the addon re-checks bounds as a second fence.
 *
 * fp32 only: when any tensor argument is not a Float32Array (fp64 models, or the fp64 parameters some encodings
 * keep, which the optimizer updates through the same op) the call goes to the TypeScript reference, which is
 * exact for every dtype. Tensor contents are not scanned for NaN/Inf: as in the reference (and in BLAS), a NaN
 * propagates to the outputs and cannot make a kernel misbehave.
 */
import { check, HypeError } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import { hostTensorOps, referenceLayerOps, type AdamWHyper, type LayerOps, type TensorOps } from './layers.ts';

type F32<T> = T extends FloatArray ? Float32Array : T;
/** A layer op's signature with every tensor narrowed to Float32Array: what the addon's kernel of that name takes. */
type F32Signature<F> = F extends (...args: infer A) => infer R ? (...args: { [I in keyof A]: F32<A[I]> }) => R : never;

/**
 * The addon's raw layer surface (native/bindings.cc): the LayerOps signatures of layers.ts (declared once, there)
 * over fp32 tensors.
 */
export type NativeLayerKernels = { [K in keyof LayerOps]: F32Signature<LayerOps[K]> };

function allF32(arrays: FloatArray[]): boolean {
  for (const a of arrays) if (!(a instanceof Float32Array)) return false;
  return true;
}

function size(x: number, what: string, op: string): void {
  check(
    Number.isSafeInteger(x) && x >= 0,
    'shape',
    () => `${op}: ${what} must be a non-negative integer, got ${x}; pass the tensor's row count and width`,
  );
}

function positive(x: number, what: string, op: string): void {
  check(
    Number.isSafeInteger(x) && x >= 1,
    'shape',
    () => `${op}: ${what} must be a positive integer, got ${x}; pass the tensor's real size`,
  );
}

function long(a: ArrayLike<number>, need: number, what: string, op: string): void {
  check(
    a.length >= need,
    'shape',
    () => `${op}: ${what} has ${a.length} elements but ${need} are needed; allocate it to the stated sizes`,
  );
}

function finite(x: number, what: string, op: string): void {
  check(Number.isFinite(x), 'non-finite', () => `${op}: ${what} must be a finite number, got ${x}`);
}

function indices(idx: Int32Array, n: number, bound: number, what: string, op: string): void {
  check(idx instanceof Int32Array, 'argument', () => `${op}: ${what}s must be an Int32Array`);
  long(idx, n, `${what}s`, op);
  for (let r = 0; r < n; r++) {
    const t = idx[r]!;
    if (t < 0 || t >= bound) {
      throw new HypeError(
        'argument',
        `${op}: ${what} ${t} at row ${r} is outside [0, ${bound}); ${what}s must be ids below the vocabulary size`,
      );
    }
  }
}

/** LayerOps running in the addon for fp32 tensors (the reference for any other dtype). */
export function nativeLayerOps(addon: NativeLayerKernels): LayerOps {
  return wrapLayerKernels(addon);
}

function wrapLayerKernels(addon: NativeLayerKernels): LayerOps {
  const ref = referenceLayerOps;
  return {
    layerNormForward(x, gamma, beta, out, mean, rstd, rows, width, eps) {
      if (!allF32([x, gamma, beta, out, mean, rstd])) {
        return ref.layerNormForward(x, gamma, beta, out, mean, rstd, rows, width, eps);
      }
      const op = 'layerNormForward';
      size(rows, 'rows', op);
      positive(width, 'width', op);
      check(Number.isFinite(eps) && eps >= 0, 'argument', () => `${op}: eps must be finite and >= 0, got ${eps}`);
      for (const [a, what] of [
        [x, 'x'],
        [out, 'out'],
      ] as const)
        long(a, rows * width, what, op);
      long(gamma, width, 'gamma', op);
      long(beta, width, 'beta', op);
      long(mean, rows, 'mean', op);
      long(rstd, rows, 'rstd', op);
      addon.layerNormForward(
        x as Float32Array,
        gamma as Float32Array,
        beta as Float32Array,
        out as Float32Array,
        mean as Float32Array,
        rstd as Float32Array,
        rows,
        width,
        eps,
      );
    },

    layerNormBackward(dOut, x, gamma, mean, rstd, dx, dGamma, dBeta, rows, width) {
      if (!allF32([dOut, x, gamma, mean, rstd, dx, dGamma, dBeta])) {
        return ref.layerNormBackward(dOut, x, gamma, mean, rstd, dx, dGamma, dBeta, rows, width);
      }
      const op = 'layerNormBackward';
      size(rows, 'rows', op);
      positive(width, 'width', op);
      for (const [a, what] of [
        [dOut, 'dOut'],
        [x, 'x'],
        [dx, 'dx'],
      ] as const)
        long(a, rows * width, what, op);
      for (const [a, what] of [
        [gamma, 'gamma'],
        [dGamma, 'dGamma'],
        [dBeta, 'dBeta'],
      ] as const)
        long(a, width, what, op);
      long(mean, rows, 'mean', op);
      long(rstd, rows, 'rstd', op);
      addon.layerNormBackward(
        dOut as Float32Array,
        x as Float32Array,
        gamma as Float32Array,
        mean as Float32Array,
        rstd as Float32Array,
        dx as Float32Array,
        dGamma as Float32Array,
        dBeta as Float32Array,
        rows,
        width,
      );
    },

    geluForward(x, out, n) {
      if (!allF32([x, out])) return ref.geluForward(x, out, n);
      size(n, 'n', 'geluForward');
      long(x, n, 'x', 'geluForward');
      long(out, n, 'out', 'geluForward');
      addon.geluForward(x as Float32Array, out as Float32Array, n);
    },

    geluBackward(x, dOut, dx, n) {
      if (!allF32([x, dOut, dx])) return ref.geluBackward(x, dOut, dx, n);
      const op = 'geluBackward';
      size(n, 'n', op);
      long(x, n, 'x', op);
      long(dOut, n, 'dOut', op);
      long(dx, n, 'dx', op);
      addon.geluBackward(x as Float32Array, dOut as Float32Array, dx as Float32Array, n);
    },

    softmaxCrossEntropyForward(logits, targets, losses, rows, vocab, meanOut, meanIndex = 0) {
      if (!allF32([logits, losses])) {
        return ref.softmaxCrossEntropyForward(logits, targets, losses, rows, vocab, meanOut, meanIndex);
      }
      const op = 'softmaxCrossEntropyForward';
      positive(rows, 'rows', op);
      positive(vocab, 'vocab', op);
      long(logits, rows * vocab, 'logits', op);
      long(losses, rows, 'losses', op);
      indices(targets, rows, vocab, 'target', op);
      const mean = addon.softmaxCrossEntropyForward(
        logits as Float32Array,
        targets,
        losses as Float32Array,
        rows,
        vocab,
      );
      if (meanOut) meanOut[meanIndex] = mean;
      return mean;
    },

    softmaxCrossEntropyBackward(logits, targets, dLogits, rows, vocab, dLoss) {
      if (!allF32([logits, dLogits])) {
        return ref.softmaxCrossEntropyBackward(logits, targets, dLogits, rows, vocab, dLoss);
      }
      const op = 'softmaxCrossEntropyBackward';
      size(rows, 'rows', op);
      positive(vocab, 'vocab', op);
      finite(dLoss, 'dLoss', op);
      long(logits, rows * vocab, 'logits', op);
      long(dLogits, rows * vocab, 'dLogits', op);
      indices(targets, rows, vocab, 'target', op);
      addon.softmaxCrossEntropyBackward(logits as Float32Array, targets, dLogits as Float32Array, rows, vocab, dLoss);
    },

    prefixSoftmaxRows(x, rows, cols, visible) {
      if (!(x instanceof Float32Array)) return ref.prefixSoftmaxRows(x, rows, cols, visible);
      const op = 'prefixSoftmaxRows';
      size(rows, 'rows', op);
      size(cols, 'cols', op);
      long(x, rows * cols, 'x', op);
      check(visible instanceof Int32Array, 'argument', () => `${op}: visible must be an Int32Array`);
      long(visible, rows, 'visible', op);
      for (let r = 0; r < rows; r++) {
        const n = visible[r]!;
        if (n < 0 || n > cols) {
          throw new HypeError(
            'argument',
            `${op}: visible ${n} at row ${r} is outside [0, ${cols}]; it counts the keys row ${r} sees`,
          );
        }
      }
      addon.prefixSoftmaxRows(x, rows, cols, visible);
    },

    adamwStep(param, grad, m, v, n, h: AdamWHyper) {
      if (!allF32([param, grad, m, v])) return ref.adamwStep(param, grad, m, v, n, h);
      const op = 'adamwStep';
      size(n, 'n', op);
      for (const [a, what] of [
        [param, 'param'],
        [grad, 'grad'],
        [m, 'm'],
        [v, 'v'],
      ] as const)
        long(a, n, what, op);
      for (const key of ['lr', 'eps', 'weightDecay'] as const) finite(h[key], key, op);
      for (const key of ['beta1', 'beta2'] as const) {
        check(h[key] >= 0 && h[key] < 1, 'argument', () => `${op}: ${key} must be in [0, 1), got ${h[key]}`);
      }
      positive(h.step, 'step (1-based)', op);
      addon.adamwStep(param as Float32Array, grad as Float32Array, m as Float32Array, v as Float32Array, n, h);
    },

    embeddingForward(table, tokens, out, n, width, vocab) {
      if (!allF32([table, out])) return ref.embeddingForward(table, tokens, out, n, width, vocab);
      const op = 'embeddingForward';
      size(n, 'n', op);
      positive(width, 'width', op);
      positive(vocab, 'vocab', op);
      long(table, vocab * width, 'table', op);
      long(out, n * width, 'out', op);
      indices(tokens, n, vocab, 'token', op);
      addon.embeddingForward(table as Float32Array, tokens, out as Float32Array, n, width, vocab);
    },

    embeddingBackward(dOut, tokens, dTable, n, width) {
      if (!allF32([dOut, dTable])) return ref.embeddingBackward(dOut, tokens, dTable, n, width);
      const op = 'embeddingBackward';
      size(n, 'n', op);
      positive(width, 'width', op);
      long(dOut, n * width, 'dOut', op);
      // The table's row count is implied by its length (the reference's signature carries no vocab).
      const vocab = Math.floor(dTable.length / width);
      indices(tokens, n, vocab, 'token', op);
      addon.embeddingBackward(dOut as Float32Array, tokens, dTable as Float32Array, n, width);
    },

    biasAdd(out, bias, rows, width) {
      if (!allF32([out, bias])) return ref.biasAdd(out, bias, rows, width);
      size(rows, 'rows', 'biasAdd');
      positive(width, 'width', 'biasAdd');
      long(out, rows * width, 'out', 'biasAdd');
      long(bias, width, 'bias', 'biasAdd');
      addon.biasAdd(out as Float32Array, bias as Float32Array, rows, width);
    },

    biasBackward(dOut, dBias, rows, width) {
      if (!allF32([dOut, dBias])) return ref.biasBackward(dOut, dBias, rows, width);
      size(rows, 'rows', 'biasBackward');
      positive(width, 'width', 'biasBackward');
      long(dOut, rows * width, 'dOut', 'biasBackward');
      long(dBias, width, 'dBias', 'biasBackward');
      addon.biasBackward(dOut as Float32Array, dBias as Float32Array, rows, width);
    },
  };
}

/** The head layout moves in the addon (one kernel: splitQkv's direction flag; H alone is headsToTokens' case). */
type HeadLayoutKernel = (
  a: Float32Array,
  b: Float32Array,
  c: Float32Array,
  d: Float32Array,
  B: number,
  L: number,
  H: number,
  Hkv: number,
  D: number,
  qkStride: number,
  vStride: number,
) => void;
export interface NativeHeadLayoutKernels {
  splitQkv: HeadLayoutKernel;
  mergeQkv: HeadLayoutKernel;
}
type HeadLayoutOps = Pick<TensorOps, 'splitQkv' | 'mergeQkv' | 'headsToTokens' | 'tokensToHeads'>;

const EMPTY = new Float32Array(0);

/**
 * Checks a head layout move's sizes and lengths (one HypeError naming the problem); false when a tensor is not fp32
 * (the caller then runs the TypeScript loop, exact for every dtype).
 */
function headLayoutArgs(
  op: string,
  tokens: [FloatArray, string],
  heads: [FloatArray, string, number, number][],
  B: number,
  L: number,
  D: number,
): boolean {
  if (!allF32([tokens[0], ...heads.map((x) => x[0])])) return false;
  for (const [x, what] of [
    [B, 'B'],
    [L, 'L'],
    [D, 'D'],
    ...heads.map(([, what, count]) => [count, `the head count of ${what}`] as const),
  ] as const)
    size(x, what, op);
  let width = 0;
  for (const [a, what, count, stride] of heads) {
    check(
      Number.isSafeInteger(stride) && stride >= D,
      'shape',
      () => `${op}: the row stride of ${what} must be an integer >= D = ${D}, got ${stride}; pass the head row width`,
    );
    const rows = B * count * L;
    long(a, rows === 0 ? 0 : (rows - 1) * stride + D, what, op);
    width += count * D;
  }
  long(tokens[0], B * L * width, tokens[1], op);
  // memcpy between overlapping memory is undefined: the token tensor must not share memory with a head tensor.
  const t = tokens[0];
  for (const [a, what] of heads) {
    const overlap =
      a.length > 0 &&
      t.length > 0 &&
      a.buffer === t.buffer &&
      a.byteOffset < t.byteOffset + t.byteLength &&
      t.byteOffset < a.byteOffset + a.byteLength;
    check(!overlap, 'argument', () => `${op}: ${tokens[1]} and ${what} share memory; pass separate tensors`);
  }
  return true;
}

/** splitQkv or mergeQkv (their argument order: the token tensor at `tokensAt`, the head tensors q, k, v in order). */
function qkvMove(
  addon: NativeHeadLayoutKernels,
  op: 'splitQkv' | 'mergeQkv',
  names: [string, string, string, string],
  tokensAt: 0 | 3,
): TensorOps['splitQkv'] {
  return (a, b, c, d, B, L, H, Hkv, D, qkStride = D, vStride = D) => {
    const arrays = [a, b, c, d];
    const [tokens] = arrays.splice(tokensAt, 1);
    const heads = arrays.map((x, i): [FloatArray, string, number, number] => [
      x!,
      names[i + (tokensAt === 0 ? 1 : 0)]!,
      i === 0 ? H : Hkv,
      i === 2 ? vStride : qkStride,
    ]);
    if (!headLayoutArgs(op, [tokens!, names[tokensAt]!], heads, B, L, D)) {
      return hostTensorOps[op](a, b, c, d, B, L, H, Hkv, D, qkStride, vStride);
    }
    addon[op](
      a as Float32Array,
      b as Float32Array,
      c as Float32Array,
      d as Float32Array,
      B,
      L,
      H,
      Hkv,
      D,
      qkStride,
      vStride,
    );
  };
}

/** splitQkv, mergeQkv, headsToTokens and tokensToHeads as memcpy of D-float runs in the addon for fp32 tensors. */
export function nativeHeadLayoutOps(addon: NativeHeadLayoutKernels): HeadLayoutOps {
  return {
    splitQkv: qkvMove(addon, 'splitQkv', ['qkv', 'q', 'k', 'v'], 0),
    mergeQkv: qkvMove(addon, 'mergeQkv', ['dq', 'dk', 'dv', 'dqkv'], 3),
    headsToTokens(x, out, B, H, L, D, stride = D) {
      if (!headLayoutArgs('headsToTokens', [out, 'out'], [[x, 'x', H, stride]], B, L, D)) {
        return hostTensorOps.headsToTokens(x, out, B, H, L, D, stride);
      }
      addon.mergeQkv(x as Float32Array, EMPTY, EMPTY, out as Float32Array, B, L, H, 0, D, stride, stride);
    },
    tokensToHeads(x, out, B, H, L, D, stride = D) {
      if (!headLayoutArgs('tokensToHeads', [x, 'x'], [[out, 'out', H, stride]], B, L, D)) {
        return hostTensorOps.tokensToHeads(x, out, B, H, L, D, stride);
      }
      addon.splitQkv(x as Float32Array, out as Float32Array, EMPTY, EMPTY, B, L, H, 0, D, stride, stride);
    },
  };
}
