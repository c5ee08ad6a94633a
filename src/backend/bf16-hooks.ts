/**
 * Where the host backends find their bf16 members (gemmBf16, attention with operands 'bf16'): bf16.ts registers its
 * implementations here when it loads. The indirection keeps the reference backend free of the native addon's
 * loader (the core entry bundles for browsers) and the backends free of import cycles with bf16.ts.
 */
import { HypeError } from '../errors.ts';
import type { Backend } from './backend.ts';

export interface HostBf16 {
  /** `native`: the addon's bf16 kernels; otherwise the fp64 emulation rounded to fp32 (the reference backend). */
  gemm(native: boolean, ...a: Parameters<Backend['gemm']>): void;
  forward(native: boolean, ...a: Parameters<Backend['attentionForward']>): ReturnType<Backend['attentionForward']>;
  backward(native: boolean, ...a: Parameters<Backend['attentionBackward']>): ReturnType<Backend['attentionBackward']>;
}

let registered: HostBf16 | null = null;

export function registerHostBf16(impl: HostBf16): void {
  registered = impl;
}

export function hostBf16(): HostBf16 {
  if (!registered)
    throw new HypeError(
      'argument',
      "bf16 operands need the bf16 module, which is not loaded; import 'hype-attention/node' (or its bf16.ts) first",
    );
  return registered;
}
