/**
 * Mixed precision as PyTorch's autocast does it, over any backend: the returned backend is the given one except
 * that every gemm runs as gemmBf16 (A and B rounded to bf16, fp32 accumulation into fp32 C) and every fused
 * attention call passes operands 'bf16' (q, k, v, dOut rounded to bf16; fp32 softmax statistics and results).
 * Tensors stay fp32 handles, so layer norms, GELU, the loss, the gradients, the master weights and AdamW are fp32
 * exactly as without it; the weights are rounded to bf16 afresh wherever a gemm reads them (each step). On the
 * native backend the rounding happens inside the kernels (the gemm's packing pass, the attention kernels' operand
 * buffers), so no bf16 copy of a tensor is allocated per call. Attention over explicit scores (host-only
 * encodings) and the Householder walk keep their own precision.
 */
import type { AttentionOptions, Backend, Precision } from './backend.ts';
import { HypeError } from '../errors.ts';
import './bf16.ts'; // registers the host backends' bf16 members (bf16-hooks.ts)

export const PRECISIONS: readonly Precision[] = ['fp32', 'bf16'];

/** Parses a --precision value, or one HypeError naming the choices. */
export function parsePrecision(raw: unknown): Precision {
  if (typeof raw === 'string' && (PRECISIONS as readonly string[]).includes(raw)) return raw as Precision;
  throw new HypeError(
    'argument',
    `unknown precision ${JSON.stringify(raw)}; choose --precision fp32 (default) or bf16 (bf16 matmul and ` +
      'attention operands, fp32 accumulation and master weights)',
  );
}

/** The backend for a precision: itself for 'fp32', the autocasting view of it for 'bf16'. */
export function withPrecision<T, I>(be: Backend<T, I>, precision: Precision): Backend<T, I> {
  if (precision === 'fp32') return be;
  const bf16 = <O extends AttentionOptions<T>>(opts: O): O => ({ ...opts, operands: 'bf16' });
  const overrides: Partial<Backend<T, I>> = {
    gemm: (...a) => be.gemmBf16(...a),
    attentionForward: (shape, q, k, v, opts) => be.attentionForward(shape, q, k, v, bf16(opts)),
    attentionBackward: (shape, q, k, v, out, lse, dOut, opts) =>
      be.attentionBackward(shape, q, k, v, out, lse, dOut, bf16(opts)),
  };
  return new Proxy(be, {
    get(target, prop) {
      if (prop === 'name') return `${target.name} (bf16 mixed precision)`;
      if (Object.hasOwn(overrides, prop)) return overrides[prop as keyof typeof overrides];
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}
